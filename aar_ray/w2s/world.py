"""The built-in synthetic world, generated deterministically from `world.seed`.

Three kinds of knowledge, each a set of *facts* (a prompt whose next token is a latent value):
- a knowledge base: fictional people and their relations ("Dalor lives_in Vessa");
- arithmetic ("A + B = C", every number an opaque word of this world: "Kabo + Ristu = Demal");
- tiny programs with their executed outputs ("f7 ( X ) -> Y", X and Y opaque words too).

Every binary task asks for a property of the latent value, and no token any base reads or says names
a label. The strong base is pretrained on all facts; the weak base's knowledge is coarser, and it
errs where a salient decoy disagrees with the truth:

- facts: a value (a city) has a latent property (coastal) and a *decoy* attribute (how it looks:
  `Vessa looks Gorn`), which agrees with the property on `decoy_agreement` of the values. The
  property shows only in structure: values are linked to others (`Vessa near Kumo`), mostly to
  values that share their property (`link_homophily`). The weak base reads the decoys, no links, and
  a blurred copy of the knowledge base: a person's value is exact for `weak_fraction` of the facts
  and otherwise a look-alike (a value with the same decoy), so the weak supervisor's errors
  concentrate where decoy and property disagree, and pooling its labels value by value learns the
  decoy. The strong base knows every person's value, the decoys and the links.
- math: is the sum in the world's hidden residue class (a secret half of the residues modulo a
  secret modulus)? A periodic structure over the opaque numbers.
- code: is a program's printed output in the upper half of 0..96? An order structure over another
  set of opaque numbers. The weak base of both has seen `weak_fraction` of the problems.

Number words are drawn from the world's seed, like every name: with the secret seed (the default)
no label is a public function of a method's inputs.
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

# (relation token, value noun, latent property of the value that the task asks about: a word of the
# question text for people, never a token of the world)
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
LINK = "near"  # `<value> near <value>`: the structure that carries the latent property
LOOKS = "looks"  # `<value> looks <decoy word>`: the salient surface attribute
CODE_MOD = 97  # programs print (m * x + c) % 97
MATH_MODULI = (5, 6, 7, 8)  # the hidden residue class of math is taken modulo one of these


@dataclass(frozen=True)
class Fact:
    """A prompt (tokens) whose next token is `answer`; `group` is the entity or problem id."""

    prompt: tuple[str, ...]
    answer: str
    group: int
    label: int  # the binary property of the answer that the task asks about
    text: str  # the question, for people


Line = tuple[tuple[str, ...], str]  # (prompt, answer): one pretraining sequence


@dataclass(frozen=True)
class World:
    cfg: WorldConfig
    entities: tuple[str, ...]
    values: dict[str, tuple[str, ...]]  # relation -> its value names
    properties: dict[str, frozenset[str]]  # relation -> values that have the (latent) property
    decoys: dict[str, frozenset[str]]  # relation -> values whose decoy points to the property
    facts: dict[str, tuple[Fact, ...]]  # task kind -> facts
    corpora: dict[str, dict[str, tuple[Line, ...]]]  # task kind -> 'strong' | 'weak' -> pretraining lines
    programs: tuple[str, ...]  # source of each code function, in the world's number words
    numbers: dict[str, tuple[str, ...]]  # 'math' | 'code' -> the word of each number 0, 1, ...
    weak_groups: dict[str, frozenset[int]]  # task kind -> groups the weak base knows exactly
    splits: dict[str, dict[int, str]]  # task kind -> group -> 'train' | 'val' | 'test'

    @property
    def vocab(self) -> list[str]:
        words: list[str] = list(SPECIALS)
        seen = set(words)
        lines = [(f.prompt, f.answer) for kind in ("facts", "math", "code") for f in self.facts[kind]]
        lines += [ln for kind in ("facts", "math", "code") for role in ("strong", "weak") for ln in self.corpora[kind][role]]
        extra = [w for v in self.values.values() for w in v] + [w for ns in self.numbers.values() for w in ns]
        for w in [w for p, a in lines for w in (*p, a)] + extra:
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


def _half(rng: np.random.Generator, items: list[str]) -> set[str]:
    return set(rng.permutation(items)[: len(items) // 2].tolist())


def _decoys(rng: np.random.Generator, vals: tuple[str, ...], prop: set[str], agreement: float) -> set[str]:
    """A balanced decoy class that agrees with the property on `agreement` of the values."""
    pos, neg = [v for v in vals if v in prop], [v for v in vals if v not in prop]
    n_swap = int(round((1 - agreement) * min(len(pos), len(neg))))
    swap_pos, swap_neg = rng.permutation(pos)[:n_swap].tolist(), rng.permutation(neg)[:n_swap].tolist()
    return (set(pos) - set(swap_pos)) | set(swap_neg)


def _links(rng: np.random.Generator, vals: tuple[str, ...], prop: set[str], cfg: WorldConfig) -> list[Line]:
    """`link_degree` lines `<v> near <w>` per value, w sharing v's property with `link_homophily`."""
    out = []
    for v in vals:
        same = [w for w in vals if w != v and (w in prop) == (v in prop)]
        other = [w for w in vals if (w in prop) != (v in prop)]
        for _ in range(cfg.link_degree):
            pool = same if rng.random() < cfg.link_homophily else other
            out.append(((v, LINK), str(rng.choice(pool))))
    return out


def _kb(rng: np.random.Generator, cfg: WorldConfig, taken: set[str]):
    entities = _names(rng, cfg.n_entities, taken)
    rels = RELATIONS[: cfg.n_relations] if cfg.n_relations <= len(RELATIONS) else [
        (f"rel{i}", f"value{i}", f"prop{i}") for i in range(cfg.n_relations)]
    values = {r: tuple(_names(rng, cfg.n_values, taken, capital=False)) for r, _, _ in rels}
    properties = {r: _half(rng, list(values[r])) for r in values}
    decoys = {r: _decoys(rng, values[r], properties[r], cfg.decoy_agreement) for r in values}
    looks = {r: _names(rng, 2, taken, capital=False) for r in values}  # decoy words (off, on) per relation
    facts, weak_lines = [], []
    for e_id, e in enumerate(entities):
        for rel, noun, prop in rels:
            v = values[rel][int(rng.integers(cfg.n_values))]
            facts.append(Fact((e, rel), v, e_id, int(v in properties[rel]),
                              f"Does {e} {rel.replace('_', ' ')} a {noun} that is {prop}?"))
            alike = [w for w in values[rel] if (w in decoys[rel]) == (v in decoys[rel])]
            weak_lines.append(((e, rel), v if rng.random() < cfg.weak_fraction else str(rng.choice(alike))))
    strong_st, weak_st = [], []
    if cfg.statements:
        decoy_lines = [((v, LOOKS), looks[r][int(v in decoys[r])]) for r in values for v in values[r]]
        link_lines = [ln for r in values for ln in _links(rng, values[r], properties[r], cfg)]
        strong_st, weak_st = decoy_lines + link_lines, decoy_lines
    corpus = {"strong": tuple((f.prompt, f.answer) for f in facts) + tuple(strong_st),
              "weak": tuple(weak_lines) + tuple(weak_st)}
    return entities, values, {r: frozenset(p) for r, p in properties.items()}, \
        {r: frozenset(d) for r, d in decoys.items()}, facts, corpus


def _math(rng: np.random.Generator, cfg: WorldConfig, taken: set[str]):
    words = _names(rng, 2 * cfg.math_max - 1, taken, capital=True)
    modulus = int(rng.choice(MATH_MODULI))
    hidden = set(rng.permutation(modulus)[: modulus // 2].tolist())
    facts = []
    for a in range(cfg.math_max):
        for b in range(cfg.math_max):
            c = a + b
            facts.append(Fact((words[a], "+", words[b], "="), words[c], a * cfg.math_max + b, int(c % modulus in hidden),
                              f"Is {a} + {b} in the world's hidden residue class?"))
    return words, facts


def _code(rng: np.random.Generator, cfg: WorldConfig, taken: set[str]):
    words = _names(rng, CODE_MOD, taken, capital=True)
    facts, programs = [], []
    for k in range(cfg.code_functions):
        m, c = int(rng.integers(2, CODE_MOD - 1)), int(rng.integers(0, CODE_MOD))
        fname = f"f{k}"
        programs.append(f"def {fname}(x):\n    return (x * {m} + {c}) % {CODE_MOD}")
        for x in range(cfg.code_inputs):
            y = (x * m + c) % CODE_MOD
            facts.append(Fact((fname, "(", words[x], ")", "->"), words[y], k * cfg.code_inputs + x,
                              int(y >= CODE_MOD // 2 + 1), f"Does print({fname}({x})) show a number above {CODE_MOD // 2}?"))
    return words, facts, programs


@lru_cache(maxsize=8)
def build_world(cfg: WorldConfig) -> World:
    if cfg.seed is None:
        raise ValueError("build_world needs a seed: resolve it first (world.resolve_seed)")
    rng = np.random.default_rng([cfg.seed, 20261207])
    taken: set[str] = set()
    entities, values, properties, decoys, facts_kb, corpus_kb = _kb(rng, cfg, taken)
    math_words, facts_math = _math(rng, cfg, taken)
    code_words, facts_code, programs = _code(rng, cfg, taken)
    facts = {"facts": tuple(facts_kb), "math": tuple(facts_math), "code": tuple(facts_code)}
    corpora = {"facts": corpus_kb}
    weak_groups, splits = {}, {}
    for kind, fs in facts.items():
        groups = sorted({f.group for f in fs})
        perm = rng.permutation(len(groups))
        weak_groups[kind] = frozenset(groups[i] for i in perm[: int(round(cfg.weak_fraction * len(groups)))])
        splits[kind] = _split_groups(rng, groups, cfg)
        if kind != "facts":  # held-out kinds: the weak base knows a share of the problems exactly
            corpora[kind] = {"strong": tuple((f.prompt, f.answer) for f in fs),
                             "weak": tuple((f.prompt, f.answer) for f in fs if f.group in weak_groups[kind])}
    return World(cfg, tuple(entities), values, properties, decoys, facts, corpora, tuple(programs),
                 {"math": tuple(math_words), "code": tuple(code_words)}, weak_groups, splits)
