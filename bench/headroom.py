"""Headroom: how much of the facts gap methods recover without ground truth, world by world.

On public worlds 0-2 and on two worlds drawn through the secret-seed path (as a campaign draws its
world: the seeds are never printed or written), harness seeds 0-2, the `probe` recipe, and on world 0
under `lora` too, with the engine in-process, it records per world:
- the benchmark: `weak_test_acc`, `ceiling_test_acc`, `gap` (their difference), `naive_val_pgr`,
  `naive_pgr_std`, `naive_test_pgr`;
- `literature`: {method: val PGR} for every built-in literature baseline (Burns et al.'s confidence
  loss, confident-only, label smoothing, bootstrapping), `literature_test` the same on test, and
  `literature_beats_naive`: those whose val PGR beats naive's by more than naive's seed std;
- the reference method (`bench/reference/link_communities.py`): `reference_val_pgr`,
  `reference_test_pgr`, and its held-out generalization `reference_math_pgr`, `reference_code_pgr`
  (test PGR on the world's math and code tasks, beside naive's `naive_math_pgr`, `naive_code_pgr`);
- the generic unsupervised read (`bench/reference/generic_read.py`, PCA of the student's hidden states
  oriented by the weak labels): `generic_val_pgr`; and the value vote (`value_vote.py`, weak labels
  pooled per recalled value): `value_vote_val_pgr`;
- `shuffled_teacher_val_pgr`: the reference with shuffled weak labels (the integrity audit's view);
- `diagnostics` (trusted side, reading the generator): the strong and weak bases' recall of a
  person's value, the weak labels' accuracy where the decoy agrees and disagrees with the property,
  and the share of the student's link mass that stays within a property community.
Writes bench/results/headroom.json with the git SHA it was measured at (`git_sha`).
Run alone: .venv/bin/python bench/headroom.py [worlds, default: 0 1 2 secret-1 secret-2 0@lora]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["AAR_TRACKING"] = "off"
REFERENCE = ROOT / "bench/reference/link_communities.py"
GENERIC = ROOT / "bench/reference/generic_read.py"
VALUE_VOTE = ROOT / "bench/reference/value_vote.py"
LITERATURE = ("confidence", "confident_only", "label_smoothing", "bootstrap")
SEEDS = (0, 1, 2)
WORLDS = ["0", "1", "2", "secret-1", "secret-2", "0@lora"]
LORA = ["recipe=lora"]  # the lora recipe with its defaults, as bench/train.py measures it


def draw_secret_world() -> int:
    """A world seed drawn the way an installation draws its secret one, in a fresh private cache."""
    from aar_ray.w2s.world import secret_seed

    saved = os.environ.get("AAR_CACHE_DIR")
    os.environ["AAR_CACHE_DIR"] = tempfile.mkdtemp(prefix="aar_secret_world_")
    try:
        return secret_seed()
    finally:
        if saved is None:
            os.environ.pop("AAR_CACHE_DIR")
        else:
            os.environ["AAR_CACHE_DIR"] = saved


def experiment(world_seed: int, task: str = "facts", overrides: tuple[str, ...] = ()):
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s import engine

    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml",
                      ["torch_threads=1", f"world.seed={world_seed}", f"task={task}", "methods=[naive]", *overrides])
    return engine.prepare(cfg, progress=False)


def method_pgr(exp, method: Path | str, seed: int, shuffle_teacher: bool = False) -> dict:
    """One trial scored by the engine: {'val', 'test'} PGR and test accuracy."""
    import torch

    from aar_ray.w2s import engine
    from aar_ray.w2s.methods import resolve

    base = engine.baseline(exp, seed)
    inputs = engine.trial_inputs(exp, seed, base)
    if shuffle_teacher:  # the audit's question: does the score survive weak labels that say nothing?
        perm = torch.randperm(len(inputs.ctx.weak_labels), generator=torch.Generator().manual_seed(10_000 + seed))
        inputs.ctx.weak_labels = inputs.ctx.weak_labels[perm]
    preds, _ = engine.run_in_process(resolve(str(method)), inputs)
    acc, pgr = engine.score(exp, base, inputs.eval_idx, preds)
    return {"val": pgr["val"], "test": pgr["test"], "test_acc": acc["test"],
            "weak_test_acc": base.weak_acc["test"], "ceiling_test_acc": base.ceiling_acc["test"]}


def _mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def _std(runs: list[dict], key: str) -> float:
    from aar_ray.w2s.metrics import mean_std

    return mean_std([r[key] for r in runs])["std"]


def diagnostics(exp) -> dict:
    """Trusted side, not a method: what the bases know and where the teacher errs (reads the generator)."""
    import numpy as np
    import torch

    from aar_ray.w2s import engine
    from aar_ray.w2s.models import features
    from aar_ray.w2s.world import LINK, build_world

    task, world = exp.task, build_world(exp.cfg.world)
    vocab = task.tokenizer.get_vocab()
    answer = {(vocab[f.prompt[0]], vocab[f.prompt[1]]): vocab[f.answer] for f in world.facts["facts"]}
    true = torch.tensor([answer[(int(r[1]), int(r[2]))] for r in task.input_ids])  # (N,) value token
    test = torch.from_numpy(task.split == "test")
    out = {}
    for role, base in (("strong", exp.strong), ("weak", exp.weak)):
        top = features(base, task.input_ids, task.attention_mask, "softmax").argmax(1)  # (N,)
        out[f"{role}_value_recall_test"] = float((top[test] == true[test]).float().mean())
    rel_of = {v: r for r, vals in world.values.items() for v in vals}
    inv = {i: w for w, i in vocab.items()}
    base = engine.baseline(exp, 0)
    vals = [inv[int(true[i])] for i in base.idx_b]
    agree = np.array([(v in world.decoys[rel_of[v]]) == (v in world.properties[rel_of[v]]) for v in vals])
    right = (base.weak_labels.numpy() > 0.5) == task.labels[base.idx_b].numpy()
    out["weak_label_acc_decoy_agrees"] = float(right[agree].mean())
    out["weak_label_acc_decoy_disagrees"] = float(right[~agree].mean())
    same = total = 0.0
    for rel, values in world.values.items():
        ids = torch.tensor([[vocab["<bos>"], vocab[v], vocab[LINK]] for v in values])
        p = features(exp.strong, ids, torch.ones_like(ids), "softmax")[:, [vocab[v] for v in values]]  # (C, C)
        prop = torch.tensor([v in world.properties[rel] for v in values])
        same += float(p[prop[:, None] == prop[None, :]].sum())
        total += float(p.sum())
    out["strong_link_mass_within_community"] = same / total
    return out


def heldout(world_seed: int, overrides: tuple[str, ...]) -> dict:
    """Test PGR of the reference and of naive on the world's held-out math and code tasks."""
    out = {}
    for task in ("math", "code"):
        exp = experiment(world_seed, task, overrides)
        for name, method in (("reference", REFERENCE), ("naive", "naive")):
            out[f"{name}_{task}_pgr"] = _mean([method_pgr(exp, method, s) for s in SEEDS], "test")
    return out


def world_scores(world_seed: int, overrides: tuple[str, ...] = (), audits: bool = True) -> dict:
    """Every number of one world (see the module docstring); audits=False skips the diagnostics,
    the shuffled-teacher run and the held-out tasks."""
    exp = experiment(world_seed, "facts", overrides)
    runs = {m: [method_pgr(exp, m, s) for s in SEEDS] for m in ("naive", *LITERATURE)}
    ref = [method_pgr(exp, REFERENCE, s) for s in SEEDS]
    naive = runs["naive"]
    out = {"weak_test_acc": _mean(naive, "weak_test_acc"), "ceiling_test_acc": _mean(naive, "ceiling_test_acc"),
           "naive_val_pgr": _mean(naive, "val"), "naive_pgr_std": _std(naive, "val"),
           "naive_test_pgr": _mean(naive, "test"),
           "literature": {m: _mean(runs[m], "val") for m in LITERATURE},
           "literature_test": {m: _mean(runs[m], "test") for m in LITERATURE},
           "reference_val_pgr": _mean(ref, "val"), "reference_val_pgr_std": _std(ref, "val"),
           "reference_test_pgr": _mean(ref, "test"),
           "generic_val_pgr": _mean([method_pgr(exp, GENERIC, s) for s in SEEDS], "val"),
           "value_vote_val_pgr": _mean([method_pgr(exp, VALUE_VOTE, s) for s in SEEDS], "val")}
    out["gap"] = out["ceiling_test_acc"] - out["weak_test_acc"]
    out["literature_beats_naive"] = sorted(m for m, v in out["literature"].items()
                                           if v - out["naive_val_pgr"] > out["naive_pgr_std"])
    if audits:
        out["shuffled_teacher_val_pgr"] = _mean([method_pgr(exp, REFERENCE, s, shuffle_teacher=True) for s in SEEDS], "val")
        out["diagnostics"] = diagnostics(exp)
        out |= heldout(world_seed, overrides)
    return out


def git_sha() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def main(worlds: list[str]) -> dict:
    t0 = time.time()
    out = {"reference": REFERENCE.stem, "generic": GENERIC.stem, "literature": list(LITERATURE), "task": "facts",
           "seeds": list(SEEDS), "git_sha": git_sha(), "worlds": {}}
    for name in worlds:
        world, _, recipe = name.partition("@")
        seed = draw_secret_world() if world.startswith("secret") else int(world)
        overrides = tuple(LORA) if recipe == "lora" else ()
        t = time.time()
        out["worlds"][name] = world_scores(seed, overrides, audits=not recipe) | {"recipe": recipe or "probe"}
        out["worlds"][name]["seconds"] = time.time() - t
        r = out["worlds"][name]
        lit = " ".join(f"{m} {v:+.2f}" for m, v in r["literature"].items())
        print(f"  world {name}: gap {r['gap']:.3f} | naive val {r['naive_val_pgr']:+.3f} ± {r['naive_pgr_std']:.3f} | "
              f"{lit} | reference val {r['reference_val_pgr']:+.3f} test {r['reference_test_pgr']:+.3f} | "
              f"generic {r['generic_val_pgr']:+.3f} ({r['seconds']:.0f}s)", flush=True)
    out["seconds"] = time.time() - t0
    dest = ROOT / "bench/results/headroom.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest} ({out['seconds']:.0f}s)")
    return out


if __name__ == "__main__":
    main(sys.argv[1:] or WORLDS)
