"""Headroom: how much of the facts gap a method recovers without ground truth.

Runs the reference method (`bench/reference/elicit_two_hop.py`, a normal method file that reads
only what every method may) and naive on worlds 0-2, seeds 0-2, with the engine in-process, and
writes bench/results/headroom.json. Beside the numbers a method could earn it records, on the
trusted side and kept apart from the method, why: how well each base recalls a person's value by
next-token prediction (hop 1), how well the strong base states each value's property (hop 2), what
the one-hop ablation (`value_vote.py`: pool weak labels per recalled value, no statements) earns,
and what the reference earns from shuffled weak labels (the integrity audit's view: it must fall).
`reference_scores(world_seed)` is the entry point for bench/research.py.
Run alone: .venv/bin/python bench/headroom.py [world seeds, default 0 1 2]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["AAR_TRACKING"] = "off"
REFERENCE = ROOT / "bench/reference/elicit_two_hop.py"
ONE_HOP = ROOT / "bench/reference/value_vote.py"
SEEDS = (0, 1, 2)


def experiment(world_seed: int):
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s import engine

    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml",
                      ["torch_threads=1", f"world.seed={world_seed}", "methods=[naive]"])
    return engine.prepare(cfg, progress=True)


def method_pgr(exp, method: Path | str, seed: int, shuffle_teacher: bool = False) -> dict:
    """One trial scored by the engine: {'val', 'test'} PGR and test accuracy."""
    import torch

    from aar_ray.w2s import engine
    from aar_ray.w2s.methods import resolve

    base = engine.baseline(exp, seed)
    inputs = engine.trial_inputs(exp, seed, base)
    if shuffle_teacher:  # the audit's question, with its permutation (aar_ray/scoring.py): does the score survive?
        perm = torch.randperm(len(inputs.ctx.weak_labels), generator=torch.Generator().manual_seed(10_000 + seed))
        inputs.ctx.weak_labels = inputs.ctx.weak_labels[perm]
    preds, _ = engine.run_in_process(resolve(str(method)), inputs)
    acc, pgr = engine.score(exp, base, inputs.eval_idx, preds)
    return {"val": pgr["val"], "test": pgr["test"], "test_acc": acc["test"],
            "weak_test_acc": base.weak_acc["test"], "ceiling_test_acc": base.ceiling_acc["test"]}


def _summary(prefix: str, runs: list[dict]) -> dict:
    """Mean, sample std and per-seed values of a method's val and test PGR over seeds."""
    from aar_ray.w2s.metrics import mean_std

    out = {}
    for split in ("val", "test"):
        xs = [r[split] for r in runs]
        ms = mean_std(xs)
        out |= {f"{prefix}_{split}_pgr": ms["mean"], f"{prefix}_{split}_pgr_std": ms["std"],
                f"{prefix}_{split}_pgr_per_seed": xs}
    return out


def recall_diagnostics(exp) -> dict:
    """Trusted side, not a method: how much each hop of the reference the bases actually know.

    hop 1: share of examples whose true value is the base's top next token after the input;
    hop 2: share of values whose true property the strong base ranks above its negation after
    `<bos> <value> is`. Both read the world generator, which no method may.
    """
    import torch

    from aar_ray.w2s.models import features
    from aar_ray.w2s.world import RELATIONS, build_world

    task, world = exp.task, build_world(exp.cfg.world)
    vocab = task.tokenizer.get_vocab()
    answer = {(vocab[f.prompt[0]], vocab[f.prompt[1]]): vocab[f.answer] for f in world.facts["facts"]}
    true = torch.tensor([answer[(int(r[1]), int(r[2]))] for r in task.input_ids])  # (N,) value token
    out = {}
    for role, base in (("strong", exp.strong), ("weak", exp.weak)):
        top = features(base, task.input_ids, task.attention_mask, "softmax").argmax(1)  # (N,)
        for split in ("val", "test"):
            rows = torch.from_numpy(task.split == split)
            out[f"{role}_value_recall_{split}"] = float((top[rows] == true[rows]).float().mean())
    right = total = 0
    for rel, _, prop in RELATIONS[: exp.cfg.world.n_relations]:
        vals = world.values[rel]
        ids = torch.tensor([[vocab["<bos>"], vocab[v], vocab["is"]] for v in vals])  # (n_values, 3)
        p = features(exp.strong, ids, torch.ones_like(ids), "softmax")
        says = p[:, vocab[prop]] > p[:, vocab[f"not_{prop}"]]
        right += sum(int(s) == int(v in world.properties[rel]) for s, v in zip(says.tolist(), vals))
        total += len(vals)
    out["strong_statement_acc"] = right / total
    return out


def reference_scores(world_seed: int, seeds: tuple[int, ...] = SEEDS, audits: bool = True) -> dict:
    """Naive and reference PGR on one world (mean, std, per seed), plus the diagnostics.

    audits=False skips the one-hop ablation, the shuffled-teacher run and the recall diagnostics.
    """
    exp = experiment(world_seed)
    naive = [method_pgr(exp, "naive", s) for s in seeds]
    ref = [method_pgr(exp, REFERENCE, s) for s in seeds]
    out = {**_summary("naive", naive), **_summary("reference", ref),
           "weak_test_acc": sum(r["weak_test_acc"] for r in ref) / len(ref),
           "ceiling_test_acc": sum(r["ceiling_test_acc"] for r in ref) / len(ref),
           "reference_test_acc": sum(r["test_acc"] for r in ref) / len(ref)}
    if audits:
        out |= _summary("one_hop", [method_pgr(exp, ONE_HOP, s) for s in seeds])
        out |= _summary("shuffled_teacher", [method_pgr(exp, REFERENCE, s, shuffle_teacher=True) for s in seeds])
        out["diagnostics"] = recall_diagnostics(exp)
    return out


def main(world_seeds: list[int]) -> dict:
    t0 = time.time()
    out = {"reference": REFERENCE.stem, "one_hop_ablation": ONE_HOP.stem, "task": "facts",
           "seeds": list(SEEDS), "worlds": {}}
    for w in world_seeds:
        out["worlds"][str(w)] = reference_scores(w)
    out["seconds"] = time.time() - t0
    dest = ROOT / "bench/results/headroom.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"headroom bench: facts, seeds {list(SEEDS)}, reference {out['reference']} ({out['seconds']:.0f}s)")
    for w, r in out["worlds"].items():
        d = r["diagnostics"]
        print(f"  world {w}: naive val {r['naive_val_pgr']:+.3f} test {r['naive_test_pgr']:+.3f} | reference val "
              f"{r['reference_val_pgr']:+.3f} ± {r['reference_val_pgr_std']:.3f} test {r['reference_test_pgr']:+.3f} | "
              f"one-hop val {r['one_hop_val_pgr']:+.3f} | shuffled teacher val {r['shuffled_teacher_val_pgr']:+.3f}")
        print(f"           strong recall test {d['strong_value_recall_test']:.3f} (weak {d['weak_value_recall_test']:.3f}),"
              f" statements {d['strong_statement_acc']:.3f}")
    print(f"wrote {dest}")
    return out


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [0, 1, 2])
