"""The built-in synthetic world, generated deterministically from `world.seed`.

Three kinds of knowledge, each a set of *facts* (a prompt whose next token is a latent value):
- a knowledge base: fictional people and their relations ("Dalor lives_in Vessa");
- arithmetic ("17 + 23 = 40");
- tiny programs with their executed outputs ("f7 ( 12 ) -> 43", f7 being
  `def f7(x): return (x * 5 + 3) % 97`).

The strong base is pretrained on all facts of a kind; the weak base on `weak_fraction` of the
groups (entities, problems). Every binary task asks for a property of the latent value, which the
strong base can read from what it remembers and the weak base often cannot.
"""
from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from aar_ray.config import WorldConfig

SECRET_FILE = "world_seed"  # under <cache>/private/ (0700): read by the harness, never mounted in a sandbox

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "sh"]
_NUCLEI = ["a", "e", "i", "o", "u", "ae", "ou", "ia"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x"]

# (relation token, value noun, property of the value that the tasks ask about)
RELATIONS = [
    ("lives_in", "city", "coastal"),
    ("works_as", "profession", "outdoors"),
    ("owns", "pet", "nocturnal"),
    ("studies", "subject", "quantitative"),
    ("supports", "team", "champion"),
    ("drives", "vehicle", "electric"),
    ("speaks", "language", "tonal"),
    ("collects", "artifact", "ancient"),
]
CODE_MOD = 97  # programs print (m * x + c) % 97: a prime, so output bits are not input bits


@dataclass(frozen=True)
class Fact:
    """A prompt (tokens) whose next token is `answer`; `group` is the entity or problem id."""

    prompt: tuple[str, ...]
    answer: str
    group: int
    label: int  # the binary property of the answer that the task asks about
    text: str  # the question, for people


@dataclass(frozen=True)
class World:
    cfg: WorldConfig
    entities: tuple[str, ...]
    values: dict[str, tuple[str, ...]]  # relation -> its value names
    properties: dict[str, frozenset[str]]  # relation -> values that have the property
    facts: dict[str, tuple[Fact, ...]]  # task kind -> facts
    statements: dict[str, tuple[tuple[tuple[str, ...], str], ...]]  # task kind -> (prompt, answer) about values
    programs: tuple[str, ...]  # source of each code function
    weak_groups: dict[str, frozenset[int]]  # task kind -> groups the weak base was pretrained on
    splits: dict[str, dict[int, str]]  # task kind -> group -> 'train' | 'val' | 'test'

    @property
    def vocab(self) -> list[str]:
        words: list[str] = list(SPECIALS)
        seen = set(words)
        for kind in ("facts", "math", "code"):
            for f in self.facts[kind]:
                for w in (*f.prompt, f.answer):
                    if w not in seen:
                        seen.add(w)
                        words.append(w)
        extra = [w for v in self.values.values() for w in v]  # values no entity happens to hold
        extra += [w for st in self.statements.values() for prompt, ans in st for w in (*prompt, ans)]
        for w in extra:
            if w not in seen:
                seen.add(w)
                words.append(w)
        return words


def _names(rng: np.random.Generator, n: int, taken: set[str], capital: bool = True) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        k = int(rng.integers(2, 4))
        w = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(k - 1)) + rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
        w = w.capitalize() if capital else w
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _split_groups(rng: np.random.Generator, groups: list[int], cfg: WorldConfig) -> dict[int, str]:
    order = rng.permutation(len(groups))
    n_test = int(round(cfg.test_fraction * len(groups)))
    n_val = int(round(cfg.val_fraction * len(groups)))
    split = {}
    for rank, i in enumerate(order):
        split[groups[i]] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return split


def secret_seed() -> int:
    """This installation's world seed: drawn once (62 random bits: no method can try them all),
    stored 0600 in a 0700 directory of the cache, which sandboxes never mount."""
    from aar_ray.w2s.cache import private_once

    return int(private_once(SECRET_FILE, lambda: str(secrets.randbits(62))).strip())


def resolve_seed(cfg: WorldConfig) -> tuple[WorldConfig, bool]:
    """(`cfg` with a seed, whether the world is public): a pinned seed is public, None is the secret one."""
    if cfg.seed is not None:
        return cfg, True
    return dataclasses.replace(cfg, seed=secret_seed()), False


@lru_cache(maxsize=8)
def build_world(cfg: WorldConfig) -> World:
    if cfg.seed is None:
        raise ValueError("build_world needs a seed: resolve it first (world.resolve_seed)")
    rng = np.random.default_rng([cfg.seed, 20231214])
    taken: set[str] = set()
    entities = _names(rng, cfg.n_entities, taken)
    rels = RELATIONS[: cfg.n_relations] if cfg.n_relations <= len(RELATIONS) else [
        (f"rel{i}", f"value{i}", f"prop{i}") for i in range(cfg.n_relations)]
    values = {r: tuple(_names(rng, cfg.n_values, taken, capital=False)) for r, _, _ in rels}
    properties = {r: frozenset(rng.permutation(values[r])[: cfg.n_values // 2].tolist()) for r in values}

    facts_kb = []
    for e_id, e in enumerate(entities):
        for rel, noun, prop in rels:
            v = values[rel][int(rng.integers(cfg.n_values))]
            facts_kb.append(Fact((e, rel), v, e_id, int(v in properties[rel]),
                                 f"Does {e} {rel.replace('_', ' ')} a {noun} that is {prop}?"))

    facts_math = []
    for a in range(cfg.math_max):
        for b in range(cfg.math_max):
            c = a + b
            facts_math.append(Fact((str(a), "+", str(b), "="), str(c), a * cfg.math_max + b,
                                   int(c % 4 < 2), f"Is ({a} + {b}) mod 4 below 2?"))

    facts_code, programs = [], []
    for k in range(cfg.code_functions):
        m, c = int(rng.integers(2, CODE_MOD - 1)), int(rng.integers(0, CODE_MOD))
        fname = f"f{k}"
        programs.append(f"def {fname}(x):\n    return (x * {m} + {c}) % {CODE_MOD}")
        for x in range(cfg.code_inputs):
            y = (x * m + c) % CODE_MOD
            facts_code.append(Fact((fname, "(", str(x), ")", "->"), str(y), k * cfg.code_inputs + x,
                                   int(y % 4 < 2), f"Does print({fname}({x})) show a number whose value mod 4 is below 2?"))

    facts = {"facts": tuple(facts_kb), "math": tuple(facts_math), "code": tuple(facts_code)}
    # General knowledge about values, in both bases' corpora: "Vessa is coastal", "37 mod 4 is high".
    # It makes the property a concept the bases hold, as an LLM holds "coastal" as a concept; a
    # student can then find it with little, noisy supervision. Prompts match the facts' lengths.
    kb_st = tuple(((v, "is"), prop if v in properties[rel] else f"not_{prop}")
                  for rel, _, prop in rels for v in values[rel])
    numbers = sorted({int(f.answer) for f in facts_math} | {int(f.answer) for f in facts_code})
    mod_word = {n: "low" if n % 4 < 2 else "high" for n in numbers}
    math_st = tuple(((str(n), "mod", "4", "is"), mod_word[n]) for n in numbers)
    code_st = tuple(((str(n), "mod", "4", "is", "so"), mod_word[n]) for n in numbers)
    statements = {"facts": kb_st, "math": math_st, "code": code_st} if cfg.statements else {k: () for k in facts}
    weak_groups, splits = {}, {}
    for kind, fs in facts.items():
        groups = sorted({f.group for f in fs})
        perm = rng.permutation(len(groups))
        weak_groups[kind] = frozenset(groups[i] for i in perm[: int(round(cfg.weak_fraction * len(groups)))])
        splits[kind] = _split_groups(rng, groups, cfg)
    return World(cfg, tuple(entities), values, properties, facts, statements, tuple(programs), weak_groups, splits)
