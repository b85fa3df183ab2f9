"""Research efficiency: the offline researcher team against Ray Tune (Optuna) on the same budget.

Both search the same method-composition space (`aar_ray.agents.compose`) on the built-in benchmark
with the same number of trials, scored by the same scorer on the same harness seeds. Writes
bench/results/research.json with offline_best_val_pgr, offline_best_test_pgr, tune_best_val_pgr,
tune_best_test_pgr, naive_val_pgr and naive_pgr_std; a team's "best" is its best trial by
validation PGR (what it could see), reported with that trial's hidden test PGR.
Run alone: .venv/bin/python bench/research.py [trials_per_researcher]
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
os.environ["AAR_TRACKING"] = "off"
DIRECTIONS = ["data selection and filtering", "loss design", "teacher calibration"]


def _scorer(trials_each: int, world_seed: int = 0):
    """The scorer on a pinned (public) world: each offline researcher may have `trials_each` trials
    scored; the driver's naive line and the Tune searcher (one searcher, the whole team's budget) are
    counted by the bench itself."""
    from aar_ray.config import ScoringConfig, W2SConfig, load_config
    from aar_ray.scoring import Scorer

    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml", ["torch_threads=1", f"world.seed={world_seed}"])
    return Scorer(cfg, ScoringConfig(seeds=[0, 1, 2], query_budget=trials_each), exempt=("driver", "tune"))


def run_inline(scorer, source: str, fidelity: str = "full") -> dict:
    """Run a method on the scorer's request in-process (trusted compositions only) -> predictions."""
    from aar_ray.sandbox.trial import run_trusted

    return dict(run_trusted(source, scorer.request(fidelity)).preds)


class _Jobs:
    def __init__(self, scorer, forum):
        self.scorer, self.forum = scorer, forum

    def __call__(self, trial_id, owner, source, fidelity, name):
        from aar_ray.sandbox.contract import TrialState
        from aar_ray.w2s.methods import source_hash

        val = self.scorer.score(owner, trial_id, name, source, fidelity, run_inline(self.scorer, source, fidelity))
        self.forum.upsert_trial(trial_id, owner, source_hash(source), name, fidelity, TrialState.SCORED, val)

    def owner_status(self, owner):
        return {"gpu_seconds": 0.0}


def offline_team(scorer, trials_each: int, workdir: Path) -> list[dict]:
    from aar_ray.agents.offline import OfflineBrain
    from aar_ray.agents.researcher import Researcher, ToolExecutor
    from aar_ray.config import ResearcherBudget
    from aar_ray.forum import Forum

    forum = Forum(workdir / "forum.db", n_seeds=3)
    jobs = _Jobs(scorer, forum)
    budget = ResearcherBudget(idle_wait_s=0.0)  # each researcher's trials: the scorer's query budget
    # the researchers take turns step by step, as concurrent actors would interleave
    team = []
    for i, direction in enumerate(DIRECTIONS):
        ex = ToolExecutor(f"r{i}", forum, scorer, jobs, budget, None, jobs, [0, 1, 2],
                          total_trials=trials_each * len(DIRECTIONS))
        team.append(Researcher(f"r{i}", OfflineBrain(direction, seed=i), ex, budget, time.time() + 7200,
                               workdir / "transcripts"))
    live = list(team)
    from aar_ray.agents.base import ResearchOutcome
    while live:
        for r in list(live):
            try:
                r.step()
            except ResearchOutcome:
                live.remove(r)
    return [x for x in scorer.driver_results() if x["researcher"].startswith("r")]


def tune_team(scorer, n_trials: int) -> list[dict]:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from aar_ray.agents import compose
    from aar_ray.agents.offline import CHOICES

    space = {k: tune.choice(v) for k, v in CHOICES.items()}

    def objective(config: dict) -> dict:
        comp = {k: v for k, v in config.items() if v is not None}
        src = compose.compile_composition(comp)
        tid = f"tune-{len(scorer.trials)}"
        val = scorer.score("tune", tid, tid, src, "full", run_inline(scorer, src))
        return {"val_pgr": val["val_pgr"]["mean"]}

    # Tune drives the search; trials run in this process (scorer state is local), one at a time,
    # so both teams spend exactly the same trial budget on the same scorer.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        searcher = OptunaSearch(space=space, metric="val_pgr", mode="max", seed=0)
        for i in range(n_trials):
            cfg = searcher.suggest(f"t{i}")
            searcher.on_trial_complete(f"t{i}", objective(cfg))
    finally:
        ray.shutdown()
    return [x for x in scorer.driver_results() if x["researcher"] == "tune"]


def main(trials_each: int = 5) -> dict:
    from aar_ray.w2s.methods import resolve

    workdir = Path(tempfile.mkdtemp(prefix="aar_bench_research_"))
    scorer = _scorer(trials_each)
    naive_src = resolve("naive").read_text()
    naive = scorer.score("driver", "naive", "naive", naive_src, "full", run_inline(scorer, naive_src))
    naive_test = next(r for r in scorer.driver_results() if r["trial_id"] == "naive")["test_pgr"]
    t0 = time.time()
    off = offline_team(scorer, trials_each, workdir)
    off_s = time.time() - t0
    t0 = time.time()
    tun = tune_team(scorer, trials_each * len(DIRECTIONS))
    tune_s = time.time() - t0
    best = lambda rows: max(rows, key=lambda r: r["val_pgr"]["mean"])  # noqa: E731
    bo, bt = best(off), best(tun)
    out = {
        "trials_per_team": trials_each * len(DIRECTIONS),
        "naive_val_pgr": naive["val_pgr"]["mean"], "naive_pgr_std": naive["val_pgr"]["std"],
        "naive_test_pgr": naive_test["mean"],
        "offline_best_val_pgr": bo["val_pgr"]["mean"], "offline_best_test_pgr": bo["test_pgr"]["mean"],
        "tune_best_val_pgr": bt["val_pgr"]["mean"], "tune_best_test_pgr": bt["test_pgr"]["mean"],
        "offline_trials": len(off), "tune_trials": len(tun), "offline_s": off_s, "tune_s": tune_s,
        "offline_best": bo["name"], "tune_best": bt["name"],
    }
    dest = ROOT / "bench/results/research.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"research bench: {out['trials_per_team']} trials per team on the built-in benchmark (3 seeds each)")
    print(f"  naive            val PGR {out['naive_val_pgr']:+.3f} ± {out['naive_pgr_std']:.3f}  test {out['naive_test_pgr']:+.3f}")
    print(f"  offline team     best val PGR {out['offline_best_val_pgr']:+.3f}  its test PGR {out['offline_best_test_pgr']:+.3f}  ({off_s:.0f}s)")
    print(f"  Ray Tune/Optuna  best val PGR {out['tune_best_val_pgr']:+.3f}  its test PGR {out['tune_best_test_pgr']:+.3f}  ({tune_s:.0f}s)")
    print(f"wrote {dest}")
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
