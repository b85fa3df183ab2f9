"""The campaign driver: `aar campaign experiments/<preset>.yaml [overrides]`.

  1. connect to Ray (RAY_ADDRESS, or start a local one);
  2. start the scorer, forum, trial service (the pool) and N researchers;
  3. compute and cache the baselines (inside the scorer) and run the built-in methods;
  4. supervise until the budget or the deadline, showing progress;
  5. run the held-out math and code stage on the top-k methods (by hidden test PGR);
  6. run the integrity audits;
  7. write the report.
Every campaign has an id; rerunning with the same id resumes from what is recorded: finished trials
are reused by content key (pool ledger, scorer state, MLflow), researchers restart from the forum.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aar_ray.agents.claude import ClaudeConfig
from aar_ray.agents.offline import DIRECTION_KEYS
from aar_ray.agents.researcher import ResearcherBudget
from aar_ray.config import PROJECT_ROOT, ConfigError, W2SConfig, _check, to_yaml
from aar_ray.pool import PoolConfig
from aar_ray.scoring import ScoringConfig
from aar_ray.trial import TrialSettings

BUILTIN_BASELINES = ["naive", "confidence", "confident_only", "label_smoothing", "bootstrap"]
DRIVER = "driver"  # owner of the driver's own trials (baselines, held-out, audits)


@dataclass(frozen=True)
class CampaignBudget:
    """Campaign-wide hard limits; when one runs out the campaign winds down and still reports."""

    trials: int = 24
    """Researcher trials in all."""
    gpu_seconds: float = 1e12
    """GPU-seconds of all researchers' jobs."""
    dollars: float = 50.0
    """LLM dollars of all researchers."""
    deadline_s: float = 600.0
    """Wall-clock seconds of research (the held-out stage and report come after)."""
    grace_s: float = 120.0
    """How long running trials may finish after the stop before they are cancelled."""


@dataclass(frozen=True)
class RayConnect:
    """How the driver reaches Ray."""

    address: str = ""
    """Ray address; empty: RAY_ADDRESS if set, else start a local Ray."""
    num_cpus: int = 0
    """CPUs of a local Ray (0: all)."""
    num_gpus: int = 0
    """GPUs of a local Ray; on a CPU box these are logical GPUs, for GPU-aware scheduling."""


@dataclass(frozen=True)
class CampaignConfig:
    """A campaign: researchers, their brains and directions, the W2S problem, budgets and resources."""

    name: str = "quick"
    """Preset name."""
    campaign_id: str = ""
    """Campaign id; empty: a new one. Rerun with the same id to resume."""
    brain: str = "offline"
    """'offline', 'claude' (needs ANTHROPIC_API_KEY) or 'auto' (Claude when the key is set)."""
    n_researchers: int = 3
    """Researcher actors."""
    directions: list[str] = field(default_factory=lambda: list(DIRECTION_KEYS))
    """Research directions, assigned round-robin."""
    w2s: W2SConfig = field(default_factory=W2SConfig)
    """The weak-to-strong problem (primary task, bases, baseline recipe)."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """Seeds, query budgets, held-out tasks and audits."""
    researcher: ResearcherBudget = field(default_factory=ResearcherBudget)
    """Per-researcher limits."""
    budget: CampaignBudget = field(default_factory=CampaignBudget)
    """Campaign-wide limits."""
    trial: TrialSettings = field(default_factory=TrialSettings)
    """Trial job resources and limits."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Task pool policy."""
    claude: ClaudeConfig = field(default_factory=ClaudeConfig)
    """The Claude brain."""
    ray: RayConnect = field(default_factory=RayConnect)
    """Ray connection."""
    runs_dir: str = ""
    """Where campaign directories go; empty: $AAR_RUNS_DIR or <project>/runs."""
    baselines: list[str] = field(default_factory=lambda: list(BUILTIN_BASELINES))
    """Built-in methods the driver scores first (the naive and human-style reference lines)."""
    progress: str = "auto"
    """'auto' (a live view on a TTY, log lines otherwise), 'rich' or 'plain'."""

    def __post_init__(self) -> None:
        _check(self.brain in ("offline", "claude", "auto"), "brain", f"must be offline, claude or auto, got {self.brain!r}")
        _check(self.n_researchers >= 1, "n_researchers", f"must be >= 1, got {self.n_researchers}")
        _check(len(self.directions) >= 1, "directions", "needs at least one direction")
        _check(self.progress in ("auto", "rich", "plain"), "progress", f"must be auto, rich or plain, got {self.progress!r}")
        _check("naive" in self.baselines, "baselines", "must include 'naive' (the reference of every campaign)")
        _check(self.campaign_id == "" or all(c.isalnum() or c in "-_" for c in self.campaign_id), "campaign_id",
               f"may hold letters, digits, '-' and '_', got {self.campaign_id!r}")


class CampaignError(RuntimeError):
    """The campaign cannot start or go on; the message says why."""


def brain_kind(cfg: CampaignConfig) -> str:
    """Which brain the researchers use; a Claude preset without a key fails here, before anything runs."""
    has_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    if cfg.brain == "claude" and not has_key:
        raise CampaignError("this preset uses the Claude brain (brain=claude) but ANTHROPIC_API_KEY is not set; "
                            "export it, or run with brain=offline")
    if cfg.brain == "auto":
        return "claude" if has_key else "offline"
    return cfg.brain


def runs_root(cfg: CampaignConfig) -> Path:
    return Path(cfg.runs_dir or os.environ.get("AAR_RUNS_DIR") or PROJECT_ROOT / "runs")


def experiment_name(campaign_id: str) -> str:
    return f"aar-campaign/{campaign_id}"


def worker_env() -> dict[str, str]:
    """Environment every actor and job needs to find the same caches and tracking store."""
    from aar_ray import tracking
    from aar_ray.w2s import cache

    env = {"AAR_CACHE_DIR": str(cache.cache_dir()), "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false"}
    for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


# ---------- actors (thin: the logic lives in plain classes) ----------

class ScorerActor:
    def __init__(self, w2s, scoring, experiment_id, researcher_runs, state_path, exempt):
        from aar_ray import tracking
        from aar_ray.scoring import Scorer

        self.s = Scorer(w2s, scoring, tracking.default_tracker(), experiment_id, researcher_runs, state_path=state_path,
                        exempt=exempt)


def _forward(cls: type, target: str, names: list[str]) -> type:
    """Give an actor wrapper methods that call the same-named methods of its plain object."""
    for n in names:
        def method(self, *a, _n=n, **k):
            return getattr(getattr(self, target), _n)(*a, **k)
        method.__name__ = n
        setattr(cls, n, method)
    return cls


_forward(ScorerActor, "s", ["payloads", "score", "queries_left", "driver_results", "score_private", "audit_gap",
                            "finalize_flags", "baselines", "flagged_researchers", "source", "trial_ids",
                            "record_unscored"])


class ForumActor:
    def __init__(self, path, n_seeds):
        from aar_ray.forum import Forum

        self.f = Forum(path, n_seeds)


_forward(ForumActor, "f", ["add_method", "read_method", "upsert_trial", "trials", "leaderboard", "post_finding",
                           "read_forum", "save_state", "load_state", "stats", "set_control", "control"])


class TrialService:
    """Owns the task pool: runs trial jobs and hands their predictions to the scorer.

    Researchers submit here; a background thread collects finished jobs, scores them and updates
    the forum. A resumed campaign resubmits unfinished trials: the pool's ledger returns finished
    jobs' recorded results without running them again.
    """

    def __init__(self, pool_cfg, settings, ledger_path, scorer, forum):
        from aar_ray.pool import SqliteLedger, TaskPool

        self.settings = settings
        self.pool = TaskPool(pool_cfg, ledger=SqliteLedger(ledger_path))
        self.scorer, self.forum = scorer, forum
        self.active: dict[str, tuple[Any, dict]] = {}  # trial_id -> (handle, meta)
        self.private: dict[str, dict] = {}  # job key -> result of driver-only jobs
        self.lock = threading.Lock()
        self.stopping = False
        threading.Thread(target=self._collect, daemon=True).start()

    def submit(self, trial_id: str, owner: str, source: str, fidelity: str, name: str) -> None:
        import ray

        from aar_ray.pool import JobSpec
        from aar_ray.trial import run_trial

        payloads = ray.get(self.scorer.payloads.remote(fidelity))
        spec = JobSpec(fn=run_trial, args=(source, payloads, self.settings), owner=owner, key=trial_id,
                       num_gpus=self.settings.num_gpus, num_cpus=self.settings.num_cpus,
                       timeout_s=self.settings.timeout_s, max_retries=self.settings.max_retries)
        with self.lock:
            if trial_id in self.active:
                return
            self.active[trial_id] = (self.pool.submit(spec), {"owner": owner, "source": source, "fidelity": fidelity,
                                                             "name": name})

    def run_private(self, key: str, source: str, payloads: list) -> dict:
        """Driver-only jobs (held-out, audits): blocking, owned by the driver."""
        from aar_ray.pool import JobFailed, JobSpec
        from aar_ray.trial import run_trial

        spec = JobSpec(fn=run_trial, args=(source, payloads, self.settings), owner=DRIVER, key=key,
                       num_gpus=self.settings.num_gpus, num_cpus=self.settings.num_cpus,
                       timeout_s=self.settings.timeout_s, max_retries=self.settings.max_retries)
        try:
            return self.pool.submit(spec).result()
        except JobFailed as e:
            return {"status": e.status.value.lower(), "reason": e.error.message}

    def _collect(self) -> None:
        import ray

        while True:
            time.sleep(0.2)
            with self.lock:
                done = [(t, h, m) for t, (h, m) in self.active.items() if h.done()]
            for trial_id, handle, meta in done:
                try:
                    self._finish(ray, trial_id, handle, meta)
                except Exception as e:  # one bad result must not stop collecting the others
                    print(f"[aar] collecting trial {trial_id} failed: {e}", flush=True)
                finally:
                    with self.lock:  # a trial counts as busy until it is scored or recorded as unscored
                        self.active.pop(trial_id, None)

    def _finish(self, ray, trial_id: str, handle, meta: dict) -> None:
        from aar_ray.pool import JobFailed

        owner, fid, name = meta["owner"], meta["fidelity"], meta["name"]
        method_id = _method_id(meta["source"])
        try:
            out = handle.result()
        except JobFailed as e:
            out = {"status": e.status.value.lower(), "reason": e.error.message}
        if out.get("status") != "ok":
            self._unscored(ray, trial_id, meta, "failed", str(out.get("status")), str(out.get("reason")))
            return
        try:
            val = ray.get(self.scorer.score.remote(owner, trial_id, name, meta["source"], fid, out["preds"],
                                                   out.get("losses")))
        except Exception as e:  # budget refusal or invalid predictions: the researcher sees why
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            status = "refused" if "QueryBudgetExceeded" in repr(e) or "query budget" in msg else "failed"
            self._unscored(ray, trial_id, meta, status, status, msg)
            return
        ray.get(self.forum.upsert_trial.remote(trial_id, owner, method_id, name, fid, "scored", val, None))

    def _unscored(self, ray, trial_id: str, meta: dict, forum_status: str, status: str, reason: str) -> None:
        """A trial with no score: the researcher sees why on the forum, and MLflow keeps a FAILED run."""
        owner, fid, name, src = meta["owner"], meta["fidelity"], meta["name"], meta["source"]
        shown = reason if forum_status != "failed" else f"{status}: {reason}"
        ray.get(self.forum.upsert_trial.remote(trial_id, owner, _method_id(src), name, fid, forum_status, None, shown))
        try:
            ray.get(self.scorer.record_unscored.remote(owner, trial_id, name, src, fid, status, reason))
        except Exception as e:  # the forum has it; a tracking outage must not stop collecting
            print(f"[aar] could not record unscored trial {trial_id} in MLflow: {e}", flush=True)

    def snapshot(self) -> dict:
        snap = self.pool.snapshot()
        return {"owners": {o: dataclasses.asdict(s) for o, s in snap.owners.items()},
                "queued": snap.queued, "in_flight": snap.in_flight, "gpus_total": snap.gpus_total,
                "gpus_held": snap.gpus_held, "active": len(self.active)}

    def owner_status(self, owner: str) -> dict:
        s = self.pool.snapshot().owners.get(owner)
        return dataclasses.asdict(s) if s else {}

    def busy(self) -> int:
        with self.lock:
            return len(self.active)

    def cancel_all(self) -> int:
        with self.lock:
            items = list(self.active.items())
        n = 0
        for trial_id, (h, meta) in items:
            n += bool(h.cancel())
        deadline = time.time() + 60  # let the collector record the cancelled trials before the driver moves on
        while self.busy() and time.time() < deadline:
            time.sleep(0.2)
        return n


def _method_id(source: str) -> str:
    from aar_ray.w2s.methods import source_hash

    return source_hash(source)


class ResearcherActor:
    """One researcher as a Ray actor. Restarts rebuild it from the forum; `run` resumes the loop."""

    def __init__(self, rid: str, kind: str, direction: str, seed: int, cfg: CampaignConfig, deadline: float,
                 transcript_dir: str, researcher_run: str | None):
        import ray

        from aar_ray.agents.researcher import Researcher, ToolExecutor

        forum, scorer, service = (ray.get_actor(n) for n in ("aar-forum", "aar-scorer", "aar-trials"))
        self.rid, self.researcher_run = rid, researcher_run
        brain = _make_brain(kind, direction, seed, cfg, rid)
        executor = ToolExecutor(rid, forum, scorer, service, cfg.researcher, cfg.trial,
                                lambda *a: ray.get(service.submit.remote(*a)), list(cfg.scoring.seeds),
                                total_trials=cfg.budget.trials)
        self.researcher = Researcher(rid, brain, executor, cfg.researcher, deadline, Path(transcript_dir),
                                     stop_flag=lambda: ray.get(forum.control.remote("stop")) == "1",
                                     on_save=self._record)

    def _record(self, rid: str, outcome: str, spend: dict, path: str) -> None:
        from aar_ray import tracking

        tr = tracking.default_tracker()
        if not tr.enabled or not self.researcher_run:
            return
        tr.set_tags(self.researcher_run, {"outcome": outcome})
        tr.log_metrics(self.researcher_run, {"tokens": sum(spend.get(k, 0) for k in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")),
            "dollars": spend.get("dollars", 0.0)})
        tr.log_file(self.researcher_run, path, "transcript")

    def run(self) -> dict:
        return self.researcher.run()


def _make_brain(kind: str, direction: str, seed: int, cfg: CampaignConfig, rid: str):
    if kind == "claude":
        from aar_ray.agents.claude import ClaudeBrain
        from aar_ray.agents.prompts import system_prompt

        return ClaudeBrain(cfg.claude, system_prompt(direction), seed=seed)
    from aar_ray.agents.offline import OfflineBrain

    return OfflineBrain(direction, seed=seed, max_trials=cfg.researcher.trials)


# ---------- the driver ----------

def connect_ray(cfg: CampaignConfig, namespace: str) -> bool:
    """Connect to RAY_ADDRESS / cfg.ray.address, or start a local Ray. Returns True if we started it."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    env = {"env_vars": worker_env()}
    if ray.is_initialized():
        return False
    if address:
        # A job from `ray job submit` already has its runtime env (merging a second one fails); the
        # actors get this environment through their own options.
        ray.init(address=address, namespace=namespace, log_to_driver=False)
        return False
    kw = {"num_cpus": cfg.ray.num_cpus or None, "num_gpus": cfg.ray.num_gpus or None,
          "_temp_dir": os.environ.get("AAR_RAY_TMPDIR") or None}  # a private temp dir isolates this Ray
    ray.init(namespace=namespace, runtime_env=env, include_dashboard=False, log_to_driver=False,
             **{k: v for k, v in kw.items() if v is not None})
    return True


def _find_or_start(tracker, exp_id: str, level: str, tag: str, value: str, name: str, parent: str | None,
                   tags: dict) -> str:
    from aar_ray import tracking

    runs = tracker.client.search_runs([exp_id], filter_string=f"tags.`{tracking.LEVEL}` = '{level}' and "
                                                              f"tags.`{tag}` = '{value}'", max_results=5)
    if runs:
        return runs[0].info.run_id
    return tracker.start_run(exp_id, name, parent=parent, tags={tracking.LEVEL: level, tag: value, **tags})


class Progress:
    """A live view of the campaign on a TTY (rich), plain log lines otherwise."""

    def __init__(self, mode: str, researchers: list[tuple[str, str]]):
        self.rich = mode == "rich" or (mode == "auto" and sys.stdout.isatty())
        self.researchers = researchers
        self.last_plain = 0.0
        self.live = None
        if self.rich:
            from rich.live import Live

            self.live = Live(refresh_per_second=2, transient=False)
            self.live.start()

    def update(self, forum_trials: list[dict], pool: dict, spend: dict, elapsed: float, phase: str) -> None:
        best = {}
        for t in forum_trials:
            if t["status"] == "scored" and t["val_pgr_mean"] is not None:
                best[t["researcher"]] = max(best.get(t["researcher"], -9.0), t["val_pgr_mean"])
        counts = {rid: sum(1 for t in forum_trials if t["researcher"] == rid) for rid, _ in self.researchers}
        if self.live is not None:
            from rich.table import Table

            table = Table(title=f"aar campaign · {phase} · {elapsed:.0f}s · queue {pool.get('queued', 0)} · "
                                f"running {pool.get('in_flight', 0)} · GPUs {pool.get('gpus_held', 0):.1f}/"
                                f"{pool.get('gpus_total', 0):.0f}")
            for col in ("researcher", "direction", "trials", "best val PGR", "GPU-s", "$"):
                table.add_column(col)
            for rid, direction in self.researchers:
                o = pool.get("owners", {}).get(rid, {})
                table.add_row(rid, direction, str(counts[rid]), f"{best[rid]:+.3f}" if rid in best else "—",
                              f"{o.get('gpu_seconds', 0.0):.0f}", f"{spend.get(rid, 0.0):.2f}")
            self.live.update(table)
        elif time.time() - self.last_plain >= 10:
            self.last_plain = time.time()
            parts = [f"{rid}:{counts[rid]}t/{best[rid]:+.2f}" if rid in best else f"{rid}:{counts[rid]}t"
                     for rid, _ in self.researchers]
            print(f"[aar] {phase} {elapsed:.0f}s queue={pool.get('queued', 0)} running={pool.get('in_flight', 0)} "
                  f"gpus={pool.get('gpus_held', 0):.1f}/{pool.get('gpus_total', 0):.0f} " + " ".join(parts), flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def run_campaign(cfg: CampaignConfig) -> Path:
    """Run (or resume) a campaign; returns the path of its report.md."""
    import ray

    from aar_ray import tracking

    kind = brain_kind(cfg)  # fails fast: a Claude preset without a key never starts anything
    cid = cfg.campaign_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    cfg = dataclasses.replace(cfg, campaign_id=cid)
    run_dir = runs_root(cfg) / cid
    resumed = (run_dir / "config.yaml").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(tracking.redact(to_yaml(cfg)))
    print(f"campaign: {cid}{' (resumed)' if resumed else ''}  dir: {run_dir}", flush=True)
    t_start = time.time()

    tracker = tracking.MlflowTracker()
    exp_id = tracker.experiment(experiment_name(cid))
    camp_run = _find_or_start(tracker, exp_id, "campaign", "aar.campaign_id", cid, f"campaign {cid}", None,
                              {"preset": cfg.name, "brain": kind, **tracking.provenance()})
    if not resumed:
        tracker.log_params(camp_run, tracking.to_dict(cfg))
    rids = [f"r{i}" for i in range(cfg.n_researchers)]
    directions = {rid: cfg.directions[i % len(cfg.directions)] for i, rid in enumerate(rids)}
    rruns = {rid: _find_or_start(tracker, exp_id, "researcher", "researcher", rid, f"researcher {rid}", camp_run,
                                 {"direction": directions[rid], "brain": kind}) for rid in rids}
    rruns[DRIVER] = camp_run

    started_ray = connect_ray(cfg, namespace=f"aar-{cid}")
    progress = Progress(cfg.progress, [(r, directions[r]) for r in rids])
    try:
        env = {"runtime_env": {"env_vars": worker_env()}}
        scorer = ray.remote(num_cpus=0, max_concurrency=8)(ScorerActor).options(name="aar-scorer", **env).remote(
            cfg.w2s, cfg.scoring, exp_id, rruns, str(run_dir / "private" / "scorer.json"), (DRIVER,))
        forum = ray.remote(num_cpus=0, max_concurrency=16)(ForumActor).options(name="aar-forum", **env).remote(
            str(run_dir / "forum.db"), len(cfg.scoring.seeds))
        service = ray.remote(num_cpus=0, max_concurrency=16)(TrialService).options(name="aar-trials", **env).remote(
            cfg.pool, cfg.trial, str(run_dir / "ledger.db"), scorer, forum)
        ray.get(forum.set_control.remote("stop", "0"))
        print("[aar] baselines: pretraining (first time only) and weak/ceiling per seed...", flush=True)
        ray.get(scorer.baselines.remote())

        # the built-in methods, scored like any trial: the naive and human-style reference lines
        from aar_ray.w2s.methods import resolve

        for name in cfg.baselines:
            src = resolve(name).read_text()
            if not ray.get(forum.trials.remote(None, f"base-{name}")):
                ray.get(forum.upsert_trial.remote(f"base-{name}", DRIVER, _method_id(src), name, "full", "queued"))
            ray.get(service.submit.remote(f"base-{name}", DRIVER, src, "full", name))
        # unfinished trials of an interrupted run go back to the pool (finished ones come from its ledger)
        for t in ray.get(forum.trials.remote()):
            if t["status"] in ("queued", "running") and t["researcher"] != DRIVER and resumed:
                src = ray.get(forum.read_method.remote(t["method_id"]))["source"]
                ray.get(service.submit.remote(t["trial_id"], t["researcher"], src, t["fidelity"], t["name"]))

        deadline = time.time() + cfg.budget.deadline_s
        actors = {rid: ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(ResearcherActor).options(
            name=f"aar-researcher-{rid}", **env).remote(rid, kind, directions[rid], i, cfg, deadline,
                                                        str(run_dir / "transcripts"), rruns[rid])
            for i, rid in enumerate(rids)}
        runs = {actors[rid].run.remote(): rid for rid in rids}
        outcomes: dict[str, dict] = {}
        stop_reason = None
        while runs:
            ready, _ = ray.wait(list(runs), timeout=1.0)
            for ref in ready:
                rid = runs.pop(ref)
                try:
                    outcomes[rid] = ray.get(ref)
                except Exception as e:  # a researcher that died past its restarts: the campaign goes on
                    outcomes[rid] = {"researcher": rid, "outcome": "crashed", "message": str(e).splitlines()[0]}
            trials = ray.get(forum.trials.remote())
            snap = ray.get(service.snapshot.remote())
            spend = _spend(ray.get([forum.load_state.remote(r) for r in rids]), rids)
            progress.update([t for t in trials if t["researcher"] != DRIVER], snap, spend, time.time() - t_start,
                            "research")
            stop_reason = stop_reason or _budget_stop(cfg, trials, snap, spend, deadline)
            if stop_reason and ray.get(forum.control.remote("stop")) != "1":
                print(f"[aar] winding down: {stop_reason}", flush=True)
                ray.get(forum.set_control.remote("stop", "1"))
        # running trials may finish within the grace period; after it they are cancelled cleanly
        grace_end = time.time() + cfg.budget.grace_s
        while ray.get(service.busy.remote()) and time.time() < grace_end:
            progress.update([t for t in ray.get(forum.trials.remote()) if t["researcher"] != DRIVER],
                            ray.get(service.snapshot.remote()), {}, time.time() - t_start, "draining")
            time.sleep(1.0)
        cancelled = ray.get(service.cancel_all.remote())
        if cancelled:
            print(f"[aar] cancelled {cancelled} trials still running after the grace period", flush=True)

        _heldout_and_audits(cfg, scorer, service, forum, progress, t_start)
        ray.get(scorer.finalize_flags.remote())
        results = ray.get(scorer.driver_results.remote())
        _log_campaign_summary(tracker, camp_run, results, cfg, time.time() - t_start, outcomes, rruns, service, ray)
        tracker.end_run(camp_run)
    finally:
        progress.close()
        if started_ray:
            ray.shutdown()

    from aar_ray.report import build_report

    report = build_report(cid, run_dir, tracker)
    print(f"report: {report}", flush=True)
    return Path(report)


def _spend(states: list, rids: list[str]) -> dict[str, float]:
    out = {}
    for rid, st in zip(rids, states):
        brain = (st or {}).get("brain") or {}
        out[rid] = float((brain.get("spend") or {}).get("dollars", 0.0)) if isinstance(brain.get("spend"), dict) else 0.0
    return out


def _budget_stop(cfg: CampaignConfig, trials: list[dict], snap: dict, spend: dict, deadline: float) -> str | None:
    n = sum(1 for t in trials if t["researcher"] != DRIVER)
    if n >= cfg.budget.trials:
        return f"the campaign's trial budget is spent ({n} of {cfg.budget.trials})"
    gpu_s = sum(o.get("gpu_seconds", 0.0) for owner, o in snap.get("owners", {}).items() if owner != DRIVER)
    if gpu_s >= cfg.budget.gpu_seconds:
        return f"the campaign's GPU-second budget is spent ({gpu_s:.0f} of {cfg.budget.gpu_seconds:.0f})"
    if sum(spend.values()) >= cfg.budget.dollars:
        return f"the campaign's dollar budget is spent (${sum(spend.values()):.2f} of ${cfg.budget.dollars:.2f})"
    if time.time() >= deadline:
        return "the campaign's deadline passed"
    return None


def _heldout_and_audits(cfg: CampaignConfig, scorer, service, forum, progress: Progress, t_start: float) -> None:
    """Driver-only: held-out math and code PGR, and the audits, for the top-k by hidden test PGR."""
    import ray

    results = ray.get(scorer.driver_results.remote())
    naive = next((r for r in results if r["researcher"] == DRIVER and r["name"] == "naive"), None)
    ranked = sorted((r for r in results if r["researcher"] != DRIVER), key=lambda r: -r["test_pgr"]["mean"])
    top = ranked[: cfg.scoring.top_k]
    if naive is not None:
        top = top + [naive]  # the reference line gets held-out numbers too
    for i, r in enumerate(top):
        src = ray.get(scorer.source.remote(r["trial_id"]))
        jobs = [(f"heldout:{t}", {"task": t}) for t in cfg.scoring.heldout_tasks]
        if r["researcher"] != DRIVER:
            jobs.append(("audit:shuffled", {"shuffle": True}))
        for kind, kw in jobs:
            if kind in r["private"]:  # done before an interruption
                continue
            research = [t for t in ray.get(forum.trials.remote()) if t["researcher"] != DRIVER]
            progress.update(research, ray.get(service.snapshot.remote()), {}, time.time() - t_start,
                            f"held-out/audits {i + 1}/{len(top)}")
            payloads = ray.get(scorer.payloads.remote("full", **kw))
            out = ray.get(service.run_private.remote(f"{r['trial_id']}:{kind}", src, payloads))
            if out.get("status") == "ok":
                ray.get(scorer.score_private.remote(r["trial_id"], kind, out["preds"]))
            else:
                print(f"[aar] {kind} of {r['trial_id']} failed: {out.get('status')}: {out.get('reason')}", flush=True)
        if naive is not None and r["researcher"] != DRIVER:
            ray.get(scorer.audit_gap.remote(r["trial_id"], naive["trial_id"]))


def _log_campaign_summary(tracker, camp_run, results, cfg, wall_s, outcomes, rruns, service, ray) -> None:
    base = {r["name"]: r["test_pgr"]["mean"] for r in results if r["researcher"] == DRIVER}
    human = [v for k, v in base.items() if k != "naive"]
    metrics = {"wall_s": wall_s, "budget_trials": cfg.budget.trials,
               "trials": sum(1 for r in results if r["researcher"] != DRIVER)}
    if "naive" in base:
        metrics["naive_test_pgr_mean"] = base["naive"]
    if human:
        metrics["best_human_test_pgr_mean"] = max(human)
    tracker.log_metrics(camp_run, metrics)
    snap = ray.get(service.snapshot.remote())
    for rid, run in rruns.items():
        if rid == DRIVER:
            continue
        o = snap["owners"].get(rid, {})
        tracker.log_metrics(run, {"gpu_seconds": o.get("gpu_seconds", 0.0),
                                  "trials": sum(1 for r in results if r["researcher"] == rid)})
        if rid in outcomes:
            tracker.set_tags(run, {"outcome": outcomes[rid]["outcome"]})
        tracker.end_run(run)


def campaign_main(preset: str, overrides: list[str]) -> int:
    from aar_ray.config import load_config

    cfg = load_config(CampaignConfig, preset, overrides)
    try:
        run_campaign(cfg)
    except CampaignError as e:
        print(f"aar: {e}", file=sys.stderr)
        return 2
    return 0
