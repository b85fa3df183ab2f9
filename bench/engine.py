"""Engine benchmark: first-time pretraining of every base, one transfer run, and the benchmark's gaps.

Writes bench/results/engine.json (`pretrain_s`, `transfer_s`, per-task gap and naive PGR) and
prints a one-screen summary. Pretraining runs in a fresh cache directory, so it is measured cold.
Run alone: .venv/bin/python bench/engine.py [dotlist overrides]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(overrides: list[str]) -> dict:
    os.environ["AAR_CACHE_DIR"] = tempfile.mkdtemp(prefix="aar_bench_engine_")
    import torch

    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s import engine

    preset = ROOT / "experiments/w2s_quick.yaml"
    from bench.headroom import git_sha

    out: dict = {"git_sha": git_sha(), "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "tasks": {}}
    pretrain_s = 0.0
    for task in ("facts", "math", "code"):
        cfg = load_config(W2SConfig, preset, [f"task={task}", "methods=[naive]", "world.seed=0", *overrides])  # public world 0
        t0 = time.perf_counter()
        exp = engine.prepare(cfg)
        pretrain_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        bases = [engine.baseline(exp, s) for s in cfg.seeds]
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive = engine.run_method(exp, "naive")
        transfer_s = (time.perf_counter() - t0) / len(cfg.seeds)  # one transfer run, baselines cached
        summ = naive.summary("test")
        weak = [b.weak_acc["test"] for b in bases]
        ceil = [b.ceiling_acc["test"] for b in bases]
        out["tasks"][task] = {
            "weak_acc": sum(weak) / len(weak), "ceiling_acc": sum(ceil) / len(ceil),
            "gap": sum(ceil) / len(ceil) - sum(weak) / len(weak),
            "naive_pgr_mean": summ["pgr"]["mean"], "naive_pgr_std": summ["pgr"]["std"],
            "naive_pgr_per_seed": summ["pgr"]["per_seed"], "transfer_s": transfer_s, "baseline_s_per_seed":
                baseline_s / len(cfg.seeds), "n_test": int((exp.task.split == "test").sum()),
        }
    out["pretrain_s"] = pretrain_s
    out["transfer_s"] = max(t["transfer_s"] for t in out["tasks"].values())
    dest = ROOT / "bench/results/engine.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"engine bench ({out['cpus']} cpus, {out['threads']} torch threads)")
    print(f"  pretraining of all 6 bases, cold: {pretrain_s:6.1f} s   (target <= 240 s)")
    print(f"  one transfer run, cached bases:   {out['transfer_s']:6.2f} s   (target <= 30 s)")
    for task, t in out["tasks"].items():
        print(f"  {task:<6} weak {t['weak_acc']:.3f}  ceiling {t['ceiling_acc']:.3f}  gap {t['gap']:.3f}  "
              f"naive PGR {t['naive_pgr_mean']:+.3f} ± {t['naive_pgr_std']:.3f}  (n_test={t['n_test']})")
    print(f"wrote {dest}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
