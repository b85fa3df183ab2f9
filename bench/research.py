"""Research efficiency: the offline researcher team against Ray Tune (Optuna) on the same space and budget.

Both search the method families of `aar_ray.agents.families` (family choice plus each family's
parameters; Tune gets them as a conditional, define-by-run Optuna space), on pinned worlds (public
seeds), with the same number of scored trials, scored by the same scorer on the same harness seeds.
The offline team is three researchers with their own directions and query budgets: `offline` has the
campaign preset's directions (experiments/quick.yaml), `offline_probing` swaps teacher calibration for
representation probing (a direction that starts in the generic probing and clustering family), to show what a direction
is worth. Tune is one searcher with the team's whole budget, run with Optuna seeds TUNE_SEEDS (the
`tune_*` keys are seed 0). A team's best is its best trial by validation PGR (what it could see),
reported with that trial's hidden test PGR and its position among the team's trials (trials-to-best,
1-based). Beside them: naive, and the headroom reference (bench/headroom.py). Scoring is
deterministic, so a method file run once on a world is not run again for another team: its
predictions are reused (`memo`), and every team is still scored, and counted, for each of its trials.
Writes bench/results/research.json: {"worlds": {"0": {...}, ...}, ...}.
Run alone: .venv/bin/python bench/research.py [trials_per_researcher] [world seeds...]
      or:  .venv/bin/python bench/research.py reference  (take the reference's numbers from headroom.json)
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
TEAMS = {"offline": DIRECTIONS,
         "offline_probing": ["data selection and filtering", "loss design", "representation probing"]}
TUNE_SEEDS = [0, 1]
WORLDS = [0, 1, 2]


def _scorer(trials_each: int, world_seed: int = 0):
    """The scorer on a pinned (public) world: each offline researcher may have `trials_each` trials
    scored; the driver's naive line and the Tune searcher (one searcher, the whole team's budget) are
    counted by the bench itself."""
    from aar_ray.config import ScoringConfig, W2SConfig, load_config
    from aar_ray.scoring import Scorer

    cfg = load_config(W2SConfig, ROOT / "experiments/w2s_quick.yaml", ["torch_threads=1", f"world.seed={world_seed}"])
    tune = tuple(f"tune{s}" for s in TUNE_SEEDS)
    return Scorer(cfg, ScoringConfig(seeds=[0, 1, 2], query_budget=trials_each), exempt=("driver",) + tune)


def run_inline(scorer, source: str, fidelity: str = "full", memo: dict | None = None) -> dict:
    """Run a method on the scorer's request in-process (trusted, harness-written methods only) -> predictions;
    `memo` maps (source, fidelity) to predictions already made on this world."""
    from aar_ray.sandbox.trial import run_trusted

    memo = {} if memo is None else memo
    if (source, fidelity) not in memo:
        memo[(source, fidelity)] = dict(run_trusted(source, scorer.request(fidelity)).preds)
    return memo[(source, fidelity)]


class _Jobs:
    def __init__(self, scorer, forum, memo: dict):
        self.scorer, self.forum, self.memo = scorer, forum, memo

    def __call__(self, trial_id, owner, source, fidelity, name):
        from aar_ray.sandbox.contract import TrialState
        from aar_ray.w2s.methods import source_hash

        preds = run_inline(self.scorer, source, fidelity, self.memo)
        val = self.scorer.score(owner, trial_id, name, source, fidelity, preds)
        self.forum.upsert_trial(trial_id, owner, source_hash(source), name, fidelity, TrialState.SCORED, val)

    def owner_status(self, owner):
        return {"gpu_seconds": 0.0}


def offline_team(scorer, trials_each: int, workdir: Path, directions: list[str] = DIRECTIONS,
                 memo: dict | None = None) -> list[dict]:
    """The offline researchers, taking turns step by step as concurrent actors would interleave."""
    from aar_ray.agents.base import ResearchOutcome
    from aar_ray.agents.offline import OfflineBrain
    from aar_ray.agents.researcher import Researcher, ToolExecutor
    from aar_ray.config import ResearcherBudget
    from aar_ray.forum import Forum

    forum = Forum(workdir / "forum.db", n_seeds=len(scorer.seeds))
    jobs = _Jobs(scorer, forum, {} if memo is None else memo)
    naive = next(r for r in scorer.driver_results() if r["trial_id"] == "naive")
    forum.add_method("naive", "driver", "naive", "", "the reference line")
    forum.upsert_trial("naive", "driver", "naive", "naive", "full", "scored", {"val_pgr": naive["val_pgr"], "seeds": 3})
    budget = ResearcherBudget(idle_wait_s=0.0)  # each researcher's trials: the scorer's query budget
    live = []
    for i, direction in enumerate(directions):
        ex = ToolExecutor(f"r{i}", forum, scorer, jobs, budget, None, jobs, list(scorer.seeds),
                          total_trials=trials_each * len(directions))
        live.append(Researcher(f"r{i}", OfflineBrain(direction, seed=i, recipe=scorer.cfg.recipe), ex, budget,
                               time.time() + 7200, workdir / "transcripts"))
    while live:
        for r in list(live):
            try:
                r.step()
            except ResearchOutcome:
                live.remove(r)
    return [x for x in scorer.driver_results() if x["researcher"].startswith("r")]


def tune_space(recipe: str):
    """The offline brain's whole space as a define-by-run Optuna space: the family, then its parameters."""
    from aar_ray.agents import families

    space = families.space(recipe)

    def define(trial) -> None:
        fam = trial.suggest_categorical("family", list(space))
        for key, choices in space[fam].items():
            trial.suggest_categorical(f"{fam}.{key}", choices)

    return define


def tune_team(scorer, n_trials: int, seed: int = 0, memo: dict | None = None) -> list[dict]:
    """Ray Tune's Optuna searcher (TPE) on the same space; a configuration it proposes again is answered
    from its own record without a trial, so it too spends its budget on distinct methods."""
    import ray
    from ray.tune.search.optuna import OptunaSearch

    from aar_ray.agents import families

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    seen: dict[str, float] = {}
    try:
        searcher = OptunaSearch(space=tune_space(scorer.cfg.recipe), metric="val_pgr", mode="max", seed=seed)
        for i in range(20 * n_trials):  # suggestions, not trials: repeats cost no trial
            if len(seen) >= n_trials:
                break
            cfg = searcher.suggest(f"s{i}")
            fam = cfg["family"]
            params = families.canonical(fam, {k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith(fam + ".")})
            key = json.dumps([fam, params], sort_keys=True)
            if key not in seen:
                src, name = families.write(fam, params), f"{fam}_t{len(seen) + 1}"
                preds = run_inline(scorer, src, "full", memo)
                seen[key] = scorer.score(f"tune{seed}", f"{name}_s{seed}", name, src, "full", preds)["val_pgr"]["mean"]
            searcher.on_trial_complete(f"s{i}", {"val_pgr": seen[key]})
    finally:
        ray.shutdown()
    return [x for x in scorer.driver_results() if x["researcher"] == f"tune{seed}"]


def team_summary(rows: list[dict], prefix: str) -> dict:
    """A team's best trial by validation PGR, its test PGR, trials-to-best, and each family's best."""
    from aar_ray.agents import families

    rows = sorted(rows, key=lambda r: r["index"])
    best = max(rows, key=lambda r: (r["val_pgr"]["mean"], -r["index"]))
    per_family: dict[str, float] = {}
    for r in rows:
        fam = families.family_of(r["name"]) or "other"
        per_family[fam] = max(per_family.get(fam, float("-inf")), r["val_pgr"]["mean"])
    return {f"{prefix}_best_val_pgr": best["val_pgr"]["mean"], f"{prefix}_best_val_pgr_std": best["val_pgr"]["std"],
            f"{prefix}_best_test_pgr": best["test_pgr"]["mean"], f"{prefix}_best": best["name"],
            f"{prefix}_best_fidelity": best["fidelity"], f"{prefix}_trials": len(rows),
            f"{prefix}_trials_to_best": 1 + rows.index(best), f"{prefix}_family_best_val": per_family,
            f"{prefix}_trial_names": [r["name"] for r in rows]}


def best_heldout(scorer, rows: list[dict], prefix: str, memo: dict) -> dict:
    """The held-out math and code test PGR of a team's best trial (by validation PGR), scored as the
    campaign's held-out stage scores it (`heldout:math`, `heldout:code`)."""
    from aar_ray.sandbox.trial import run_trusted

    best = max(sorted(rows, key=lambda r: r["index"]), key=lambda r: (r["val_pgr"]["mean"], -r["index"]))
    source, out = scorer.source(best["trial_id"]), {}
    for task in ("math", "code"):
        if (source, task) not in memo:
            memo[(source, task)] = dict(run_trusted(source, scorer.request("full", task=task)).preds)
        out[f"{prefix}_best_{task}_pgr"] = scorer.score_private(best["trial_id"], f"heldout:{task}", memo[(source, task)])["mean"]
    return out


REFERENCE_KEYS = ("reference_val_pgr", "reference_test_pgr", "reference_math_pgr", "reference_code_pgr")


def _headroom_worlds() -> dict:
    """bench/results/headroom.json's worlds when it was measured at this commit, else {}."""
    from bench.headroom import git_sha

    path = ROOT / "bench/results/headroom.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data.get("worlds", {}) if data.get("git_sha") == git_sha() else {}


def refresh_reference() -> None:
    """Copy the reference's numbers from headroom.json into research.json (both measured at one commit):
    the two benches can run side by side, the research bench then measuring the reference again."""
    path = ROOT / "bench/results/research.json"
    out, worlds = json.loads(path.read_text()), _headroom_worlds()
    if out.get("git_sha") not in (None, "") and not worlds:
        raise SystemExit("bench/results/headroom.json was not measured at this commit: run bench/headroom.py first")
    for w, r in out["worlds"].items():
        if w in worlds:
            r |= {k: worlds[w][k] for k in REFERENCE_KEYS if k in worlds[w]}
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"research bench: reference numbers of worlds {sorted(set(out['worlds']) & set(worlds))} from headroom.json")


def reference(world: int) -> dict:
    """The headroom reference's PGR on `world`, from bench/results/headroom.json when it was measured at
    this commit and holds the world (same config and seeds), else measured now."""
    r = _headroom_worlds().get(str(world))
    if r is None:
        from bench.headroom import world_scores

        r = world_scores(world, audits=False)
    return {k: r[k] for k in REFERENCE_KEYS if k in r}


def _naive(scorer, memo: dict) -> dict:
    """The driver's naive line on this scorer: val mean and std, test mean."""
    from aar_ray.w2s.methods import resolve

    src = resolve("naive").read_text()
    scorer.score("driver", "naive", "naive", src, "full", run_inline(scorer, src, "full", memo))
    row = next(r for r in scorer.driver_results() if r["trial_id"] == "naive")
    return {"naive_val_pgr": row["val_pgr"]["mean"], "naive_pgr_std": row["val_pgr"]["std"],
            "naive_test_pgr": row["test_pgr"]["mean"]}


def one_world(world: int, trials_each: int) -> dict:
    t0, memo, out = time.time(), {}, reference(world)
    for team, directions in TEAMS.items():  # one scorer per team: its own query budgets and trial records
        t1, scorer = time.time(), _scorer(trials_each, world)
        out |= _naive(scorer, memo)
        rows = offline_team(scorer, trials_each, Path(tempfile.mkdtemp(prefix="aar_bench_research_")), directions, memo)
        out |= team_summary(rows, team) | best_heldout(scorer, rows, team, memo) | {f"{team}_s": time.time() - t1}
    t1, scorer, seeds = time.time(), _scorer(trials_each, world), []
    _naive(scorer, memo)
    for seed in TUNE_SEEDS:
        rows = tune_team(scorer, trials_each * len(DIRECTIONS), seed, memo)
        summary = team_summary(rows, "tune") | best_heldout(scorer, rows, "tune", memo)
        seeds.append({"seed": seed, **{k[5:]: v for k, v in summary.items()}})
        out |= summary if seed == TUNE_SEEDS[0] else {}
    out |= {"tune_seeds": seeds, "tune_s": time.time() - t1, "seconds": time.time() - t0}
    return out


def main(trials_each: int = 8, worlds: list[int] = WORLDS) -> dict:
    t0 = time.time()
    from bench.headroom import git_sha

    out = {"git_sha": git_sha(), "trials_per_team": trials_each * len(DIRECTIONS), "trials_per_researcher": trials_each,
           "teams": TEAMS, "tune_seeds": TUNE_SEEDS, "seeds": [0, 1, 2], "worlds": {}}
    for w in worlds:
        out["worlds"][str(w)] = r = one_world(w, trials_each)
        line = " | ".join(f"{k} best val {r[k + '_best_val_pgr']:+.3f} test {r[k + '_best_test_pgr']:+.3f} "
                          f"math {r[k + '_best_math_pgr']:+.3f} code {r[k + '_best_code_pgr']:+.3f} "
                          f"({r[k + '_best']}, trial {r[k + '_trials_to_best']})" for k in [*TEAMS, "tune"])
        print(f"world {w}: naive val {r['naive_val_pgr']:+.3f} | {line} | Tune seeds "
              f"{[round(x['best_val_pgr'], 3) for x in r['tune_seeds']]} | reference val {r['reference_val_pgr']:+.3f} "
              f"({r['seconds']:.0f}s)", flush=True)
    out["wall_s"] = time.time() - t0
    dest = ROOT / "bench/results/research.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"research bench: {out['trials_per_team']} scored trials per team per world, {out['wall_s']:.0f}s; "
          f"wrote {dest}")
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["reference"]:
        refresh_reference()
        sys.exit(0)
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 8, args[1:] or WORLDS)
