"""The trusted scorer: the only holder of ground-truth labels, test numbers and held-out results.

Trial jobs receive a `TrialRequest` (inputs and weak labels, never a label; built here, by
`request`) and return predictions; only the scorer turns predictions into numbers. Researchers get
validation metrics, rounded (`score`); test PGR is recorded in MLflow and kept for the driver
(`driver_results`), for the final table only: selection and ranking use validation PGR. Seeds are
the harness's: every result is the mean ± std over all of them, and a trial missing one is not a
result. Each researcher has a query budget, and the scorer enforces it: every request that returns
a score is a query (`admit`), including a resubmission answered from the record; past the budget it
refuses with `QueryBudgetExceeded`, and records the refusal. The held-out math and code tasks and
the integrity audits are driver-only (`score_private`, `audit_gap`); every trial says whether it
was audited (`audit_state`). The world's seed is resolved here: a secret one unless pinned.

`Scorer` is plain Python (unit-testable); the campaign runs it as a named Ray actor (`SCORER_NAME`).
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from aar_ray.config import HELDOUT_DATA, ScoringConfig, TrialSettings, W2SConfig
from aar_ray.probing import ProbeWatch
from aar_ray.sandbox.contract import SeedInputs, StudentSpec, TrialLimits, TrialRequest
from aar_ray.w2s.methods import source_hash
from aar_ray.w2s.metrics import mean_std

# torch and the engine are imported where the scorer works, not here: this module's config and
# errors are imported by every researcher actor, which must start without torch.

SCORER_NAME = "aar-scorer"
FLAG_TEACHER_INDEPENDENT = "teacher-independent"
FLAG_VAL_TEST_GAP = "val-test-gap"
FLAG_PROBING = "probing"
NOT_AUDITED, CLEAN = "not audited", "clean"  # a trial's audit state, unless it carries flags
AUDITS = ("audit:shuffled", "audit:gap")  # what "audited" means: both ran on the trial


def run_name(researcher: str, trial_id: str, name: str, source: str) -> str:
    """A trial run's name in the MLflow UI: who, which trial, what the method is (`r0/t3a9c confidence loss`)."""
    from aar_ray.w2s.methods import summary

    who = "baseline" if researcher == "driver" else researcher
    return f"{who}/{trial_id[:8]} {summary(source, name, 48)}"


def trial_device(device: str, num_gpus: float) -> str:
    """Where a trial's child loads the student: `w2s.device`, with 'auto' meaning the GPU the pool
    assigns when trials reserve one (`trial.num_gpus` > 0), else the CPU."""
    if device == "auto":
        return "cuda" if num_gpus > 0 else "cpu"
    return device


class ScoringError(Exception):
    """A scoring request was refused; the message says why."""


class QueryBudgetExceeded(ScoringError):
    pass


class TrialIncomplete(ScoringError):
    """Predictions are missing for some of the harness's seeds: not a result."""


@dataclass
class TrialRecord:
    trial_id: str
    researcher: str
    name: str
    source: str
    fidelity: str
    val: dict  # pgr mean/std/per_seed, acc mean
    test: dict
    per_seed: list  # engine.SeedResult per harness seed
    submitted: float
    index: int
    mlflow_run: str | None = None
    flags: set[str] = field(default_factory=set)
    private: dict = field(default_factory=dict)  # audit and held-out results
    sandbox: list = field(default_factory=list)  # the sandbox layers its trial ran under (config.SANDBOX_LAYERS)
    job: dict = field(default_factory=dict)  # the child's device, dtype, peak GPU memory and samples/s


class Scorer:
    """Holds the ground truth and baselines of the primary task (and the held-out ones on demand)."""

    def __init__(self, w2s: W2SConfig, scoring: ScoringConfig, tracker=None, experiment_id: str | None = None,
                 researcher_runs: dict[str, str] | None = None, progress: bool = False, state_path: str | None = None,
                 exempt: tuple[str, ...] = (), trial: TrialSettings = TrialSettings()):
        from aar_ray.w2s import engine

        # the world's seed resolved here, once (a secret one unless pinned): the scorer's own record of it
        self.cfg, self.world_public = engine.resolve_world(dataclasses.replace(w2s, seeds=list(scoring.seeds)))
        self.scoring = scoring
        self.trial = trial  # the limits and device every request carries
        self._building = threading.RLock()  # loading bases is not thread-safe (transformers' meta-device init)
        self._saving = threading.Lock()  # the actor serves calls on several threads; one state write at a time
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.researcher_runs = dict(researcher_runs or {})
        self._exp: dict = {"primary": engine.prepare(self.cfg, progress)}  # task -> engine.Experiment
        self._base: dict = {}  # (task, seed) -> engine.Baseline
        for s in self.cfg.seeds:
            self._baseline("primary", s)
        self.trials: dict[str, TrialRecord] = {}
        self.queries: dict[str, int] = {}
        self.admitted: set[str] = set()  # "researcher|trial_id" requests already counted
        self.refusals: list[dict] = []
        self.watch = ProbeWatch(scoring.probe_max_flips, scoring.probe_concentration, scoring.probe_min_events)
        self.t0 = time.time()
        self.exempt = set(exempt)  # the driver's own baseline trials are not researcher queries
        self.state_path = state_path
        if state_path:
            self._load()

    # ---------- data ----------

    def _experiment(self, task: str):
        from aar_ray.w2s import engine

        if task in self._exp:  # built: no lock, so a held-out task building (for backfill) never stalls a trial
            return self._exp[task]
        with self._building:  # the actor serves requests on several threads; build each experiment once
            return self._experiment_locked(task, engine)

    def _experiment_locked(self, task: str, engine):
        if task not in self._exp:
            if task not in self.scoring.heldout_tasks:
                raise ScoringError(f"unknown task {task!r}")
            self._exp[task] = engine.prepare(self._task_cfg(task))
        return self._exp[task]

    def _task_cfg(self, task: str) -> W2SConfig:
        """The experiment config of a held-out task: the primary's world and bases, the registry task behind it."""
        return dataclasses.replace(self.cfg, task=HELDOUT_DATA[self.scoring.heldout_data][task])

    def _baseline(self, task: str, seed: int):
        from aar_ray.w2s import engine

        if (task, seed) in self._base:
            return self._base[(task, seed)]
        with self._building:
            if (task, seed) not in self._base:
                self._base[(task, seed)] = engine.baseline(self._experiment(task), seed)
            return self._base[(task, seed)]

    def prepare(self, tasks: list[str]) -> list[str]:
        """Build the held-out tasks and their baselines ahead of the final stage. The driver calls it
        without waiting when the research starts, so the build (minutes on a cold cache) overlaps the
        researchers' work instead of following it. Each is built once; a request that needs one meanwhile
        waits for it. Returns the tasks built.

        Nobody waits on this call, so a build that fails says so here, when it fails (naming the task and
        the error, on the scorer's stderr, which Ray forwards to the campaign's output), and then raises;
        the final stage's own request for that task raises again."""
        import sys
        import traceback

        from aar_ray.w2s.prebuild import prebuild

        try:  # their tiny bases first, side by side (w2s/prebuild.py: sooner than one after another)
            prebuild([self._task_cfg(t) for t in tasks if t in self.scoring.heldout_tasks and t not in self._exp])
        except Exception as e:  # only a speed-up: the build below makes what is missing, or says why it cannot
            print(f"[aar] pretraining the held-out bases side by side failed ({type(e).__name__}: {e}); "
                  "building them in this process", file=sys.stderr, flush=True)
        for task in tasks:
            try:
                for s in self.cfg.seeds:
                    self._baseline(task, s)
            except Exception as e:
                print(f"[aar] held-out task {task!r} failed to build: {type(e).__name__}: {e}\n"
                      f"{traceback.format_exc()}", file=sys.stderr, flush=True)
                raise
        return list(tasks)

    @property
    def seeds(self) -> list[int]:
        return list(self.cfg.seeds)

    def baselines(self) -> dict:
        """Weak and ceiling accuracies of the primary task per seed (driver-only: includes test)."""
        return {s: {"weak": self._base[("primary", s)].weak_acc, "ceiling": self._base[("primary", s)].ceiling_acc}
                for s in self.cfg.seeds}

    def request(self, fidelity: str = "full", task: str = "primary", shuffle: bool = False) -> TrialRequest:
        """What a trial job receives: each harness seed's inputs and weak labels (never a label), the
        student on the trial's device and dtype, the probe recipe, and the trial's limits.

        `task` other than 'primary' and `shuffle` (the shuffled-teacher audit) are for the driver.
        """
        import torch

        from aar_ray.w2s import engine

        exp = self._experiment(task)
        seeds = []
        for seed in self.cfg.seeds:
            ctx = engine.trial_inputs(exp, seed, self._baseline(task, seed), fidelity).ctx
            weak = ctx.weak_labels
            if shuffle:  # permute the teacher's labels across examples: any signal left is not the teacher's
                weak = weak[torch.randperm(len(weak), generator=torch.Generator().manual_seed(10_000 + seed))]
            seeds.append(SeedInputs(seed, ctx.train_ids, ctx.train_mask, weak, ctx.eval_ids, ctx.eval_mask))
        student = StudentSpec(exp.strong.path, exp.strong.key, trial_device(self.cfg.device, self.trial.num_gpus),
                              self.cfg.strong.dtype)
        limits = TrialLimits(self.trial.seed_timeout_s, self.trial.memory_mb, self.trial.threads)
        return TrialRequest(tuple(seeds), student, exp.cfg.probe, exp.cfg.recipe, exp.cfg.finetune, fidelity,
                            exp.cfg.batch_size_features, limits)

    # ---------- scoring ----------

    def _score_seeds(self, task: str, preds_by_seed: dict) -> tuple[dict, dict, list, dict]:
        import torch

        from aar_ray.w2s import engine
        from aar_ray.w2s.engine import SeedResult

        preds_by_seed = {int(k): v for k, v in preds_by_seed.items()}
        missing = [s for s in self.cfg.seeds if s not in preds_by_seed]
        if missing:
            raise TrialIncomplete(f"predictions are missing for seeds {missing}; a result needs all of "
                                  f"{self.cfg.seeds}")
        exp = self._experiment(task)
        seeds, preds_out = [], {}
        for s in self.cfg.seeds:
            base = self._baseline(task, s)
            eval_idx = engine.eval_order(exp.task.split, s)
            try:
                preds = engine.validate_predictions(torch.as_tensor(preds_by_seed[s]), len(eval_idx))
            except ValueError as e:
                raise ScoringError(f"seed {s}: {e}") from None
            acc, pgr = engine.score(exp, base, eval_idx, preds)
            seeds.append(SeedResult(s, base.weak_acc, base.ceiling_acc, acc, pgr))
            preds_out[s] = preds
        val = {**mean_std([r.pgr["val"] for r in seeds]), "per_seed": [r.pgr["val"] for r in seeds],
               "acc": mean_std([r.transfer_acc["val"] for r in seeds])["mean"]}
        test = {**mean_std([r.pgr["test"] for r in seeds]), "per_seed": [r.pgr["test"] for r in seeds],
                "acc": mean_std([r.transfer_acc["test"] for r in seeds])["mean"]}
        return val, test, seeds, preds_out

    def queries_left(self, researcher: str) -> int:
        return self.scoring.query_budget - self.queries.get(researcher, 0)

    def trial_ids(self) -> list[str]:
        return list(self.trials)

    def admit(self, researcher: str, trial_id: str) -> dict | None:
        """Count one query of `researcher` for `trial_id` (a submission, or a resubmission of one), or
        refuse. Returns the validation view when the trial is already scored (answered from the
        record: still a query), else None. The driver's own trials are not queries."""
        if researcher not in self.exempt:
            if self.queries_left(researcher) <= 0:
                self.refusals.append({"researcher": researcher, "trial_id": trial_id, "t": time.time()})
                self._record_refusal(researcher, trial_id)
                self._save()
                n = self.scoring.query_budget
                raise QueryBudgetExceeded(f"query budget spent: {researcher} has used all {n} of its {n} scorer "
                                          "queries (every submission that returns a score is one, resubmissions "
                                          "included)")
            self.queries[researcher] = self.queries.get(researcher, 0) + 1
        self.admitted.add(f"{researcher}|{trial_id}")
        self._save()
        return self._val_view(self.trials[trial_id]) if trial_id in self.trials else None

    def release(self, researcher: str, trial_id: str) -> None:
        """Give back an admitted query whose trial ended without a score (it failed, timed out, was
        cancelled or returned invalid predictions): only a score is a query."""
        key = f"{researcher}|{trial_id}"
        if key in self.admitted and trial_id not in self.trials:
            self.admitted.discard(key)
            if researcher not in self.exempt:
                self.queries[researcher] = max(0, self.queries.get(researcher, 0) - 1)
            self._save()

    def score(self, researcher: str, trial_id: str, name: str, source: str, fidelity: str, preds_by_seed: dict,
              losses_by_seed: dict | None = None, times: tuple[float, float] | None = None,
              sandbox: tuple[str, ...] = (), job: dict | None = None) -> dict:
        """Researcher-facing: score a trial, record everything, return validation numbers only (rounded).
        A trial not yet admitted counts as a query here; predictions that are not a result (a seed
        missing, invalid values) raise before anything is counted. `sandbox`: the layers the trial ran
        under (`TrialOutcome.sandbox`; none for a trusted in-process run), tagged on its run. `job`:
        what the child reported of its run (device, dtype, peak_gpu_mb, samples_per_s), logged too."""
        if trial_id in self.trials:  # the same job's result again (a resumed pool): nothing new to count
            return self._val_view(self.trials[trial_id])
        val, test, seeds, preds = self._score_seeds("primary", preds_by_seed)
        if f"{researcher}|{trial_id}" not in self.admitted:
            self.admit(researcher, trial_id)
        for r in seeds:
            r.losses = [tuple(x) for x in (losses_by_seed or {}).get(r.seed, [])]
        rec = TrialRecord(trial_id, researcher, name, source, fidelity, val, test, seeds, time.time(), len(self.trials),
                          sandbox=list(sandbox), job=dict(job or {}))
        self.trials[trial_id] = rec
        view = self._val_view(rec)
        if researcher not in self.exempt:
            self.watch.add(researcher, self._val_probs(preds), view["val_pgr"]["mean"])
        rec.mlflow_run = self._record(rec, preds, times)
        self._save()
        return view

    def _val_view(self, rec: TrialRecord) -> dict:
        """What a researcher sees: validation numbers, rounded to `show_decimals`."""
        d = self.scoring.show_decimals
        return {"trial_id": rec.trial_id, "name": rec.name, "fidelity": rec.fidelity,
                "val_pgr": {"mean": round(rec.val["mean"], d), "std": round(rec.val["std"], d),
                            "per_seed": [round(v, d) for v in rec.val["per_seed"]]},
                "val_acc": round(rec.val["acc"], d), "seeds": len(rec.per_seed),
                "queries_left": self.queries_left(rec.researcher)}

    def _val_probs(self, preds: dict):
        """Every seed's predictions on its validation rows, one after the other (what the probing watch
        compares): an edited eval row is a validation example in some seed's order or another."""
        from aar_ray.w2s import engine

        exp = self._experiment("primary")
        rows = [preds[s][exp.task.split[engine.eval_order(exp.task.split, s)] == "val"] for s in self.cfg.seeds]
        return np.concatenate([r.numpy() for r in rows])

    # ---------- driver-only ----------

    def driver_results(self) -> list[dict]:
        """Every trial with val and test numbers and flags (for ranking and reports, never for researchers)."""
        return [{"trial_id": r.trial_id, "researcher": r.researcher, "name": r.name, "fidelity": r.fidelity,
                 "val_pgr": {k: r.val[k] for k in ("mean", "std")}, "test_pgr": {k: r.test[k] for k in ("mean", "std")},
                 "flags": self.flags(r), "audit": self.audit_state(r), "index": r.index, "t": r.submitted - self.t0,
                 "mlflow_run": r.mlflow_run, "private": r.private}
                for r in self.trials.values()]

    def numbers(self, trial_id: str) -> dict | None:
        """Driver-only: a scored trial's unrounded validation and test numbers (mean, std, per seed, acc),
        its held-out and audit results and flags, as `scorer.json` keeps them (what a replay compares)."""
        rec = self.trials.get(trial_id)
        if rec is None:
            return None
        return {"val": rec.val, "test": rec.test, "private": rec.private, "flags": sorted(rec.flags)}

    def flags(self, rec: TrialRecord) -> list[str]:
        return sorted(rec.flags | ({FLAG_PROBING} if self.watch.flagged(rec.researcher) else set()))

    def audit_state(self, rec: TrialRecord) -> str:
        """'not audited', 'clean', or the trial's flags ('teacher-independent,probing'): never a silent clean."""
        flags = self.flags(rec)
        if flags:
            return ",".join(flags)
        return CLEAN if all(a in rec.private for a in AUDITS) else NOT_AUDITED

    def world(self) -> dict:
        """Driver-only: the world's seed (to reproduce the run) and whether it is public (pinned)."""
        return {"seed": self.cfg.world.seed, "public": self.world_public}

    def source(self, trial_id: str) -> str:
        return self.trials[trial_id].source

    def score_private(self, trial_id: str, kind: str, preds_by_seed: dict) -> dict:
        """Driver-only scoring: kind 'heldout:math', 'heldout:code' or 'audit:shuffled'."""
        rec = self.trials[trial_id]
        task = kind.split(":", 1)[1] if kind.startswith("heldout:") else "primary"
        _, test, seeds, _ = self._score_seeds(task, preds_by_seed)
        rec.private[kind] = {"mean": test["mean"], "std": test["std"]}
        if kind.startswith("heldout:") and self.tracker is not None and rec.mlflow_run:
            from aar_ray import tracking
            # the task's own weak and ceiling accuracies beside its PGR: a reader can see the gap it divides by
            accs = {name: float(np.mean([getattr(r, name)["test"] for r in seeds]))
                    for name in ("weak_acc", "ceiling_acc", "transfer_acc")}
            tracking.log_generalization(self.tracker, rec.mlflow_run, {task: {**test, **accs}})
        if kind == "audit:shuffled":
            orig = rec.test["mean"]
            if orig > self.scoring.shuffle_min_pgr and test["mean"] >= self.scoring.shuffle_ratio * orig:
                rec.flags.add(FLAG_TEACHER_INDEPENDENT)
            self._log_private(rec, {"audit_shuffled_pgr_mean": test["mean"]})
        self._save()
        return rec.private[kind]

    def audit_gap(self, trial_id: str, reference_id: str) -> bool:
        """Val-test gap audit against a reference trial (the naive baseline) on the same seeds."""
        rec, ref = self.trials[trial_id], self.trials[reference_id]
        diff = np.array(rec.val["per_seed"]) - np.array(rec.test["per_seed"])
        ref_diff = np.array(ref.val["per_seed"]) - np.array(ref.test["per_seed"])
        excess = float(diff.mean() - ref_diff.mean())
        sigma = math.sqrt(float(diff.var(ddof=1) + ref_diff.var(ddof=1)) / len(diff)) if len(diff) > 1 else 0.0
        flagged = excess > max(self.scoring.gap_sigmas * sigma, self.scoring.gap_floor)
        if flagged:
            rec.flags.add(FLAG_VAL_TEST_GAP)
        rec.private["audit:gap"] = {"excess": excess, "sigma": sigma}
        self._log_private(rec, {"audit_val_test_excess": excess})
        self._save()
        return flagged

    def finalize_flags(self) -> None:
        """Write every trial's audit state (and flags, if any) to its MLflow run as tags."""
        for rec in self.trials.values():
            if self.tracker is not None and rec.mlflow_run:
                tags = {"aar.audit": self.audit_state(rec)}
                if self.flags(rec):
                    tags["aar.flags"] = ",".join(self.flags(rec))
                self.tracker.set_tags(rec.mlflow_run, tags)

    def flagged_researchers(self) -> dict[str, int]:
        """Researchers the probing watch flagged, with their count of followed targeted flips."""
        return {r: n for r, n in self.watch.events.items() if self.watch.flagged(r)}

    # ---------- persistence (a resumed campaign's scorer knows every scored trial) ----------

    def _save(self) -> None:
        """Root-only JSON beside the campaign (0600 in a 0700 directory): it holds test numbers.

        One writer at a time: the actor serves calls on several threads, and two saves sharing the
        temporary file lost the race (the second's rename found it gone: a demo's final stage crashed so)."""
        if not self.state_path:
            return
        with self._saving:
            self._write_state()

    def _write_state(self) -> None:
        import json
        import os

        # copies first (each one step under the GIL): other threads go on recording while this one writes
        data = {"t0": self.t0, "queries": dict(self.queries), "refusals": list(self.refusals),
                "admitted": sorted(self.admitted), "watch": self.watch.state(),
                "trials": [{**{k: v for k, v in dataclasses.asdict(r).items() if k not in ("per_seed", "flags")},
                            "flags": sorted(r.flags), "per_seed": [dataclasses.asdict(x) for x in r.per_seed]}
                           for r in list(self.trials.values())]}
        d = os.path.dirname(self.state_path)
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        tmp = self.state_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.state_path)

    def _load(self) -> None:
        import json
        import os

        from aar_ray.w2s.engine import SeedResult

        if not os.path.exists(self.state_path):
            return
        with open(self.state_path) as fh:
            data = json.load(fh)
        self.t0, self.queries, self.refusals = data["t0"], data["queries"], data["refusals"]
        self.admitted = set(data["admitted"])
        self.watch.restore(data["watch"])
        for t in data["trials"]:
            per = [SeedResult(**{**x, "losses": [tuple(l) for l in x["losses"]]}) for x in t.pop("per_seed")]
            flags = set(t.pop("flags"))
            self.trials[t["trial_id"]] = TrialRecord(**t, per_seed=per, flags=flags)

    # ---------- recording ----------

    def _record(self, rec: TrialRecord, preds: dict, times: tuple[float, float] | None = None) -> str | None:
        """The trial's MLflow run: named `r0/t3a9c… summary`, timed as its job ran (`times`: start, end)."""
        if self.tracker is None or not self.tracker.enabled:
            return None
        from aar_ray import tracking
        from aar_ray.w2s import engine
        from aar_ray.w2s.engine import MethodResult

        cfg = dataclasses.replace(self.cfg, fidelity=rec.fidelity, methods=[rec.name])
        mr = MethodResult(rec.name, rec.source, source_hash(rec.source), rec.per_seed, preds)
        exp = self._exp["primary"]
        splits = {s: (engine.eval_order(exp.task.split, s), exp.task.split[engine.eval_order(exp.task.split, s)].tolist())
                  for s in self.cfg.seeds}
        out = tracking.record_trial(
            self.tracker, self.experiment_id, cfg, mr, {}, parent=self.researcher_runs.get(rec.researcher),
            extra_tags={"researcher": rec.researcher, "trial_id": rec.trial_id, "fidelity": rec.fidelity,
                        "aar.trial_index": str(rec.index), tracking.SANDBOX: ",".join(rec.sandbox) or "none",
                        **({"aar.baseline": rec.name} if rec.researcher in self.exempt else {})},
            weak_key=exp.weak.key, strong_key=exp.strong.key, eval_splits=splits, times=times,
            run_name=run_name(rec.researcher, rec.trial_id, rec.name, rec.source))
        self.tracker.log_metrics(out.run_id, {"wall_time_s": rec.submitted - self.t0, "trial_index": rec.index,
                                              **{k: float(rec.job[k]) for k in ("peak_gpu_mb", "samples_per_s")
                                                 if rec.job.get(k) is not None}})
        if rec.job.get("device"):
            self.tracker.set_tags(out.run_id, {"aar.device": rec.job["device"], "aar.dtype": rec.job.get("dtype", "")})
        return out.run_id

    def record_unscored(self, researcher: str, trial_id: str, name: str, source: str, fidelity: str, status: str,
                        reason: str, sandbox: tuple[str, ...] = ()) -> str | None:
        """Record in MLflow a trial whose job produced no score (failed, timed out, cancelled, refused),
        with the sandbox layers it ran under (none when nothing ran)."""
        if self.tracker is None or not self.tracker.enabled or trial_id in self.trials:
            return None
        from aar_ray import tracking

        return tracking.record_unscored_trial(
            self.tracker, self.experiment_id, trial_id, name, source, status, reason,
            parent=self.researcher_runs.get(researcher),
            extra_tags={"researcher": researcher, "fidelity": fidelity, "task": self.cfg.task,
                        tracking.SANDBOX: ",".join(sandbox) or "none",
                        **({"aar.baseline": name} if researcher in self.exempt else {})})

    def _record_refusal(self, researcher: str, trial_id: str) -> None:
        if self.tracker is not None and self.tracker.enabled and researcher in self.researcher_runs:
            n = sum(1 for r in self.refusals if r["researcher"] == researcher)
            self.tracker.log_metrics(self.researcher_runs[researcher], {"query_refusals": n})

    def _log_private(self, rec: TrialRecord, metrics: dict) -> None:
        if self.tracker is not None and self.tracker.enabled and rec.mlflow_run:
            self.tracker.log_metrics(rec.mlflow_run, metrics)
