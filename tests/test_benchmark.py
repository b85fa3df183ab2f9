"""The built-in benchmark keeps a real, stable weak-to-strong gap that no label token gives away.

These are the properties everything above the engine relies on: PGR divides by (ceiling - weak),
so the gap must be genuine, naive PGR must leave methods room on both sides, and its spread over
seeds must be small enough that an improvement is not noise. Checked on two worlds, the benchmark must
not be tuned to one: world 0 here, and world 4 (never tuned on) in tests/test_agents.py's team test,
which pretrains its bases anyway. The world's structure (no label word in any corpus, a decoy that
the teacher follows, opaque held-out numbers) is checked on the generator itself, on several worlds.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from aar_ray.config import W2SConfig, WorldConfig, load_config
from aar_ray.w2s import engine
from aar_ray.w2s.world import RELATIONS, build_world

from w2s_helpers import assert_benchmark_room

PRESET = Path(__file__).resolve().parents[1] / "experiments/w2s_quick.yaml"


def _run(task: str, world_seed: int) -> dict:
    cfg = load_config(W2SConfig, PRESET, [f"task={task}", f"world.seed={world_seed}", "methods=[naive]"])
    return engine.train(cfg, progress=False).to_json()


@pytest.mark.slow
@pytest.mark.benchmark_bases("facts@0")
def test_primary_task_has_a_stable_gap_and_room():
    r = _run("facts", 0)
    assert_benchmark_room(r["ceiling_acc"]["mean"] - r["weak_acc"]["mean"], r["methods"]["naive"]["pgr"], r)


@pytest.mark.slow
@pytest.mark.benchmark_bases("math@0", "code@0")
@pytest.mark.parametrize("task", ["math", "code"])
def test_heldout_tasks_have_a_gap(task):
    r = _run(task, 0)
    assert r["ceiling_acc"]["mean"] - r["weak_acc"]["mean"] >= 0.10, r


def _words(lines) -> set[str]:
    return {w for prompt, answer in lines for w in (*prompt, answer)}


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_no_base_reads_or_says_a_word_for_a_label(seed):
    """No corpus holds a word that names a property, its negation or a verdict; and no word that any
    base is taught to say after a value (`<value> looks <word>`, `<value> near <value>`) tells the label
    of that value exactly: the decoy agrees with it on `decoy_agreement` of the values only."""
    world = build_world(WorldConfig(seed=seed))
    corpus = set().union(*(_words(world.corpora[k][r]) for k in world.corpora for r in ("strong", "weak")))
    banned = {prop for _, _, prop in RELATIONS} | {f"not_{p}" for _, _, p in RELATIONS} | {
        "yes", "no", "true", "false", "low", "high", "is", "mod"}
    assert not corpus & banned, corpus & banned
    assert not any(w.startswith("not_") for w in corpus)
    for rel, values in world.values.items():
        said: dict[str, set[str]] = {}
        for (subject, verb), answer in world.corpora["facts"]["strong"]:
            if subject in values and verb == "looks":
                said.setdefault(answer, set()).add(subject)
        # two decoy words per relation; each is said of values of both classes
        assert len(said) == 2, said
        for word, subjects in said.items():
            share = sum(v in world.properties[rel] for v in subjects) / len(subjects)
            assert 0.1 < share < 0.9, (rel, word, share)


@pytest.mark.parametrize("seed", [0, 4])
def test_the_weak_base_knows_look_alikes_not_values(seed):
    """The weak base's corpus names a person's exact value for about `weak_fraction` of the facts and a
    look-alike (same decoy) otherwise; it reads no link statement, which carry the property."""
    cfg = WorldConfig(seed=seed)
    world = build_world(cfg)
    truth = {(f.prompt, f.answer) for f in world.facts["facts"]}
    decoy_of = {v: (r, v in world.decoys[r]) for r, vals in world.values.items() for v in vals}
    person_lines = [(p, a) for p, a in world.corpora["facts"]["weak"] if p[1] != "looks"]
    assert not [ln for ln in world.corpora["facts"]["weak"] if ln[0][1] == "near"]
    by_prompt = {f.prompt: f.answer for f in world.facts["facts"]}
    exact = sum((p, a) in truth for p, a in person_lines) / len(person_lines)
    assert abs(exact - cfg.weak_fraction) < 0.06, exact
    assert all(decoy_of[a] == decoy_of[by_prompt[p]] for p, a in person_lines)


def test_heldout_numbers_are_opaque_words_of_each_world():
    """Math and code numbers are words drawn from the world's seed: no digit string in any input, and
    two worlds name the same number differently, so no held-out label is a public function of a
    method's inputs (with the secret seed, the default)."""
    w0, w1 = build_world(WorldConfig(seed=0)), build_world(WorldConfig(seed=1))
    for world in (w0, w1):
        for kind in ("math", "code"):
            words = _words((f.prompt, f.answer) for f in world.facts[kind])
            assert not [w for w in words if re.fullmatch(r"-?\d+", w)], kind
            assert len(set(world.numbers[kind])) == len(world.numbers[kind])
    for kind in ("math", "code"):
        same = sum(a == b for a, b in zip(w0.numbers[kind], w1.numbers[kind]))
        assert same <= 2, (kind, same)
    # the held-out tasks have structures of their own: math's label is periodic in the sum, code's a threshold
    math_labels = {int(f.text.split()[1]) + int(f.text.split()[3]): f.label for f in w0.facts["math"]}
    periods = [m for m in (5, 6, 7, 8) if all(math_labels[s] == math_labels[s % m] for s in math_labels)]
    assert len(periods) == 1, periods
