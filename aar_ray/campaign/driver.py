"""`run_campaign(cfg)`: one short function per phase (see the package docstring)."""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aar_ray import vault
from aar_ray.agents.tape import TAPES
from aar_ray.campaign.progress import Progress
from aar_ray.campaign.services import DRIVER, Services, method_id, start_services
from aar_ray.config import CampaignConfig, to_yaml
from aar_ray.sandbox.contract import TrialState


class CampaignError(RuntimeError):
    """The campaign cannot start or go on; the message says why."""


@dataclass
class Run:
    """One campaign run's identity and where it records: what every phase needs."""

    cfg: CampaignConfig
    kind: str  # the brain: 'claude' or 'offline'
    run_dir: Path
    resumed: bool
    tracker: object
    experiment_id: str
    campaign_run: str
    directions: dict[str, str]  # researcher id -> direction
    researcher_runs: dict[str, str]  # researcher id (and DRIVER) -> MLflow run
    t_start: float = field(default_factory=time.time)

    @property
    def rids(self) -> list[str]:
        return list(self.directions)


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
    from aar_ray.home import runs_dir

    return Path(cfg.runs_dir) if cfg.runs_dir else runs_dir()


def experiment_name(campaign_id: str) -> str:
    return f"aar-campaign/{campaign_id}"


def worker_env() -> dict[str, str]:
    """Environment every actor and job needs to find the same caches and tracking store. No secret:
    Ray logs every runtime env it creates; actors get secrets from the vault (`aar_ray.vault`)."""
    from aar_ray import tracking
    from aar_ray.w2s import cache

    env = {"AAR_CACHE_DIR": str(cache.cache_dir()), "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false"}
    for k in ("ANTHROPIC_BASE_URL", "MLFLOW_TRACKING_USERNAME"):  # not secrets
        if os.environ.get(k):
            env[k] = os.environ[k]
    if vault.from_env():  # the campaign will have a vault (`start_services`): actors may ask it
        env[vault.ASK] = vault.VAULT
    return env


def connect_ray(cfg: CampaignConfig, namespace: str) -> bool:
    """Connect to RAY_ADDRESS / cfg.ray.address, or start a local Ray. Returns True if we started it."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():
        return False
    if address:
        # A job from `ray job submit` already has its runtime env (merging a second one fails); the
        # actors get this environment through their own options.
        ray.init(address=address, namespace=namespace, log_to_driver=False)
        return False
    kw = {"num_cpus": cfg.ray.num_cpus or None, "num_gpus": cfg.ray.num_gpus or None,
          "_temp_dir": os.environ.get("AAR_RAY_TMPDIR") or None}  # a private temp dir isolates this Ray
    env = worker_env()
    with vault.withheld():  # the raylet, and every worker it starts, inherits this environment: no secrets
        ray.init(namespace=namespace, runtime_env={"env_vars": env}, include_dashboard=False,
                 log_to_driver=False, **{k: v for k, v in kw.items() if v is not None})
    return True


def sandbox_requirement(cfg: CampaignConfig):
    """The sandbox layers every trial must apply (`requirement.resolve`); refuses, before anything
    starts, when this host lacks one and `sandbox.allow_degraded` is off."""
    from aar_ray.sandbox.requirement import SandboxUnavailable, resolve

    try:
        return resolve(cfg.sandbox)
    except SandboxUnavailable as e:
        raise CampaignError(str(e)) from None


def fit_to_cluster(cfg: CampaignConfig, gpus: float, physical: bool) -> tuple[CampaignConfig, str | None]:
    """(`cfg` fitted to the Ray cluster's `gpus`, a note saying what changed) at campaign start.

    `physical`: whether those GPUs have CUDA behind them (False for logical GPUs, see cluster_gpus). A
    trial asking GPUs of a cluster without any runs on the CPU when `w2s.device` allows it; on logical
    GPUs it keeps its reservation (for scheduling) and runs on the CPU. What cannot be met raises
    CampaignError naming the key.
    """
    need, device = cfg.trial.num_gpus, cfg.w2s.device
    if need == 0:
        return cfg, None
    if device == "cuda" and not (gpus and physical):
        has = "only logical GPUs" if gpus else "no GPU"
        raise CampaignError(f"trial.num_gpus={need:g} with w2s.device=cuda, but the Ray cluster has {has}: connect to "
                            "a cluster with GPUs (ray.address) or run the trials on the CPU (w2s.device=auto)")
    if gpus == 0:
        note = f"the Ray cluster has no GPU: trials run on the CPU (trial.num_gpus={need:g} is not reserved; " \
               f"w2s.device={device})"
        return dataclasses.replace(cfg, trial=dataclasses.replace(cfg.trial, num_gpus=0.0)), note
    if need > gpus + 1e-9:
        raise CampaignError(f"trial.num_gpus={need:g} asks more GPUs per trial than the Ray cluster has ({gpus:g}): "
                            "lower trial.num_gpus or add GPU nodes")
    if not physical and device == "auto":
        w2s = dataclasses.replace(cfg.w2s, device="cpu")
        return dataclasses.replace(cfg, w2s=w2s), (f"the Ray cluster's {gpus:g} GPUs are logical (no CUDA here): "
                                                   f"trials reserve trial.num_gpus={need:g} of one and run on the CPU")
    return cfg, None


def cluster_gpus() -> tuple[float, bool]:
    """(GPUs of the connected Ray cluster, whether CUDA devices back them). A GPU node without
    /dev/nvidiactl has logical GPUs only (`ray.num_gpus=N`, `ray start --num-gpus N` on a CPU box)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU")]
    if not nodes:
        return 0.0, True
    on_node = NodeAffinitySchedulingStrategy(nodes[0], soft=False)  # needs no free GPU, only that node
    probe = ray.remote(num_cpus=0)(_has_cuda_devices).options(scheduling_strategy=on_node)
    return float(ray.cluster_resources().get("GPU", 0.0)), bool(ray.get(probe.remote(), timeout=300))


def _has_cuda_devices() -> bool:
    return os.path.exists("/dev/nvidiactl")


def _find_or_start(tracker, exp_id: str, level: str, tag: str, value: str, name: str, parent: str | None,
                   tags: dict) -> str:
    from aar_ray import tracking

    runs = tracker.find_runs(exp_id, level, **{tag: value})
    if runs:
        return runs[0].run_id
    return tracker.start_run(exp_id, name, parent=parent, tags={tracking.LEVEL: level, tag: value, **tags})


def open_run(cfg: CampaignConfig, kind: str | None = None) -> Run:
    """Phase 0: the campaign's id, directory, MLflow experiment and runs (found again on a resume).
    `kind`: the brain, when it is not the preset's to decide (a replay's is the record's)."""
    from aar_ray import tracking

    kind = kind or brain_kind(cfg)  # fails fast: a Claude preset without a key never starts anything
    cid = cfg.campaign_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    cfg = dataclasses.replace(cfg, campaign_id=cid)
    run_dir = runs_root(cfg) / cid
    resumed = (run_dir / "config.yaml").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(tracking.redact(to_yaml(cfg)))
    print(f"campaign: {cid}{' (resumed)' if resumed else ''}  dir: {run_dir}", flush=True)
    tracker = tracking.MlflowTracker()
    exp_id = tracker.experiment(experiment_name(cid))
    camp_run = _find_or_start(tracker, exp_id, "campaign", "aar.campaign_id", cid, f"campaign {cid}", None,
                              {"preset": cfg.name, "brain": kind, **tracking.provenance()})
    if not resumed:
        tracker.log_params(camp_run, tracking.to_dict(cfg))
    rids = [f"r{i}" for i in range(cfg.n_researchers)]
    directions = {rid: cfg.directions[i % len(cfg.directions)] for i, rid in enumerate(rids)}
    rruns = {rid: _find_or_start(tracker, exp_id, "researcher", "researcher", rid, f"researcher {rid}", camp_run,
                                 {"direction": directions[rid], "brain": kind,
                                  tracking.DESCRIPTION: f"Researcher {rid} ({kind} brain), direction: {directions[rid]}. "
                                                        "Its trials are nested below; its transcript is an artifact."})
             for rid in rids}
    _describe(tracker, exp_id, camp_run, cfg, kind, directions)
    return Run(cfg, kind, run_dir, resumed, tracker, exp_id, camp_run, directions, {**rruns, DRIVER: camp_run})


def _describe(tracker, exp_id: str, camp_run: str, cfg: CampaignConfig, kind: str, directions: dict) -> None:
    """What the MLflow UI shows first: the experiment's and the campaign run's descriptions, with the
    way to the report (the campaign run's `report/` artifacts) and the metrics to read."""
    from aar_ray import tracking

    who = ", ".join(f"{r} ({d})" for r, d in directions.items())
    text = (f"**Campaign {cfg.campaign_id}** (preset `{cfg.name}`): {len(directions)} {kind} researchers: {who}. "
            f"Task `{cfg.w2s.task}`, recipe `{cfg.w2s.recipe}`, {len(cfg.scoring.seeds)} harness seeds per trial.\n\n"
            f"**Read the report**: the campaign run's artifacts, "
            f"[report/report.html](#/experiments/{exp_id}/runs/{camp_run}/artifacts) (and report.md, plots). "
            f"**[The trials with their PGR](#/experiments/{exp_id}/runs?viewStateShareKey={tracking.VIEW_KEY})**.\n\n"
            "Metrics on every trial run: `val_pgr_mean` (what researchers saw; ranks), `test_pgr_mean` (hidden), "
            "`heldout_math_pgr_mean`, `heldout_code_pgr_mean` (top methods only), each with `_std` over seeds. "
            "Tag `aar.audit`: not audited, clean, or the audits' flags.")
    tracker.describe_experiment(exp_id, text)
    tracker.set_tags(camp_run, {tracking.DESCRIPTION: text})


def share_trials_view(run: "Run") -> None:
    """The runs table as it should open: every trial visible under its researcher, PGR columns shown."""
    from aar_ray import tracking

    metrics = ["val_pgr_mean", "val_pgr_std", "test_pgr_mean", "test_pgr_std", "heldout_math_pgr_mean",
               "heldout_code_pgr_mean"]
    run.tracker.share_view(run.experiment_id, tracking.VIEW_KEY, metrics,
                           [run.campaign_run, *(run.researcher_runs[r] for r in run.rids)], "val_pgr_mean")


def score_baselines(run: Run, svc: Services) -> None:
    """Phase 1: the weak/ceiling baselines (inside the scorer), then the built-in methods as trials:
    the naive and human-style reference lines."""
    import ray

    from aar_ray.w2s.methods import resolve

    print("[aar] baselines: pretraining (first time only) and weak/ceiling per seed...", flush=True)
    ray.get(svc.scorer.baselines.remote())
    svc.scorer.prepare.remote(list(run.cfg.scoring.heldout_tasks))  # not awaited: built while researchers work
    world = ray.get(svc.scorer.world.remote())  # recorded for people (to reproduce the run); agents never read it
    run.tracker.set_tags(run.campaign_run, {"aar.world_seed": str(world["seed"]),
                                            "aar.world": "public" if world["public"] else "secret"})
    for name in run.cfg.baselines:
        src, tid = resolve(name).read_text(), f"base-{name}"
        if not ray.get(svc.forum.trials.remote(None, tid)):
            ray.get(svc.forum.upsert_trial.remote(tid, DRIVER, method_id(src), name, "full", TrialState.QUEUED))
        ray.get(svc.trials.submit.remote(tid, DRIVER, src, "full", name))


def resubmit_unfinished(run: Run, svc: Services) -> None:
    """Phase 1b, on a resume: unfinished researcher trials go back to the pool (finished ones come
    back from its ledger without running)."""
    import ray

    if not run.resumed:
        return
    for t in ray.get(svc.forum.trials.remote()):
        if t["status"] == TrialState.QUEUED and t["researcher"] != DRIVER:
            src = ray.get(svc.forum.read_method.remote(t["method_id"]))["source"]
            ray.get(svc.trials.submit.remote(t["trial_id"], t["researcher"], src, t["fidelity"], t["name"]))


def research(run: Run, svc: Services, progress: Progress, env: dict) -> dict[str, dict]:
    """Phase 2: the researchers work until they finish or a campaign budget stops them."""
    import ray

    from aar_ray.campaign.researchers import ResearcherActor

    cfg = run.cfg
    deadline = ray.get(svc.budget.deadline.remote(cfg.budget.deadline_s))  # the campaign's: kept across resumes
    actor = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(ResearcherActor)
    actors = {rid: actor.options(name=f"aar-researcher-{rid}", runtime_env={"env_vars": env}).remote(
        rid, run.kind, run.directions[rid], i, cfg, deadline, str(run.run_dir / "transcripts"),
        run.researcher_runs[rid], str(run.run_dir / TAPES)) for i, rid in enumerate(run.rids)}
    runs = {actors[rid].run.remote(): rid for rid in run.rids}
    outcomes: dict[str, dict] = {}
    while runs:
        ready, _ = ray.wait(list(runs), timeout=1.0)
        for ref in ready:
            rid = runs.pop(ref)
            try:
                outcomes[rid] = ray.get(ref)
            except Exception as e:  # a researcher that died past its restarts: the campaign goes on
                outcomes[rid] = {"researcher": rid, "outcome": "crashed", "message": str(e).splitlines()[0]}
        trials = ray.get(svc.forum.trials.remote())
        snap = ray.get(svc.trials.snapshot.remote())
        spend = ray.get(svc.budget.status.remote())
        progress.update([t for t in trials if t["researcher"] != DRIVER], snap,
                        {r: s["dollars"] for r, s in spend["by_researcher"].items()}, time.time() - run.t_start,
                        "research")
        stop = budget_stop(cfg, ray.get(svc.forum.budget_counts.remote()), snap, spend, deadline)
        if stop and not ray.get(svc.forum.stop_requested.remote()):
            print(f"[aar] winding down: {stop[1]}", flush=True)
            ray.get(svc.forum.set_stop.remote(*stop))
    return outcomes


def drain(run: Run, svc: Services, progress: Progress) -> None:
    """Phase 3: running trials may finish within the grace period; after it they are cancelled cleanly.
    (The trial budget never lets more trials start than it has room for, so none is cut short for it.)"""
    import ray

    grace_end = time.time() + run.cfg.budget.grace_s
    while ray.get(svc.trials.busy.remote()) and time.time() < grace_end:
        progress.update([t for t in ray.get(svc.forum.trials.remote()) if t["researcher"] != DRIVER],
                        ray.get(svc.trials.snapshot.remote()), {}, time.time() - run.t_start, "draining")
        time.sleep(1.0)
    cancelled = ray.get(svc.trials.cancel_all.remote())
    if cancelled:
        print(f"[aar] cancelled {cancelled} trials still running after the grace period", flush=True)


def budget_stop(cfg: CampaignConfig, counts: dict, snap: dict, spend: dict, deadline: float) -> tuple[str, str] | None:
    """(kind, reason) when a campaign-wide limit is reached. The trial budget counts finished trials
    (scored, or failed for a reason of the method's), not submissions; `spend` is the budget
    authority's status (the dollar cap itself is enforced there, before every call)."""
    if counts["finished"] >= cfg.budget.trials:
        return "trial_budget", f"the campaign's trial budget is spent ({counts['finished']} of {cfg.budget.trials} " \
                               "trials finished)"
    gpu_s = sum(o.get("gpu_seconds", 0.0) for owner, o in snap.get("owners", {}).items() if owner != DRIVER)
    if gpu_s >= cfg.budget.gpu_seconds:
        return "gpu_budget", f"the campaign's GPU-second budget is spent ({gpu_s:.0f} of {cfg.budget.gpu_seconds:.0f})"
    if spend["exhausted"]:
        return "dollar_budget", spend["exhausted"]
    if time.time() >= deadline:
        return "deadline", "the campaign's deadline passed"
    return None


def verdict(counts: dict, outcomes: dict[str, dict]) -> str | None:
    """Why the campaign failed, or None. A campaign none of whose researcher trials finished (all
    cancelled, or lost to the harness's faults) has no result: it does not report success."""
    if counts["finished"] > 0:
        return None
    why = "; ".join(f"{rid}: {o['outcome']}" + (f" ({o['message']})" if o.get("message") else "")
                    for rid, o in sorted(outcomes.items()))
    return f"no researcher trial finished (researchers: {why or 'none ran'})"


def log_summary(run: Run, svc: Services, outcomes: dict[str, dict]) -> str | None:
    """Phase 5: campaign and researcher metrics and outcomes; every run ended. Returns the verdict."""
    import ray

    ray.get(svc.scorer.finalize_flags.remote())
    results = ray.get(svc.scorer.driver_results.remote())
    tracker, cfg = run.tracker, run.cfg
    base = {r["name"]: r["test_pgr"]["mean"] for r in results if r["researcher"] == DRIVER}
    human = [v for k, v in base.items() if k != "naive"]
    counts = ray.get(svc.forum.budget_counts.remote())
    metrics = {"wall_s": time.time() - run.t_start, "budget_trials": cfg.budget.trials,
               "trials": sum(1 for r in results if r["researcher"] != DRIVER), "trials_finished": counts["finished"]}
    if "naive" in base:
        metrics["naive_test_pgr_mean"] = base["naive"]
    if human:
        metrics["best_human_test_pgr_mean"] = max(human)
    # the leader (by validation PGR, flagged trials last): what the campaign run's page shows first
    ranked = sorted((r for r in results if r["researcher"] != DRIVER and math.isfinite(r["val_pgr"]["mean"])),
                    key=lambda r: (bool(r["flags"]), -r["val_pgr"]["mean"]))
    if ranked:
        metrics |= {"leader_val_pgr_mean": ranked[0]["val_pgr"]["mean"], "leader_val_pgr_std": ranked[0]["val_pgr"]["std"],
                    "leader_test_pgr_mean": ranked[0]["test_pgr"]["mean"],
                    "leader_test_pgr_std": ranked[0]["test_pgr"]["std"]}
    tracker.log_metrics(run.campaign_run, {k: v for k, v in metrics.items() if math.isfinite(v)})
    snap = ray.get(svc.trials.snapshot.remote())
    spend = ray.get(svc.budget.status.remote())["by_researcher"]  # the authority's: calls lost in a crash included
    for rid in run.rids:
        rrun = run.researcher_runs[rid]
        o = snap["owners"].get(rid, {})
        tracker.log_metrics(rrun, {"gpu_seconds": o.get("gpu_seconds", 0.0),
                                   "trials": sum(1 for r in results if r["researcher"] == rid),
                                   **({"dollars": spend[rid]["dollars"], "tokens": spend[rid]["tokens"]}
                                      if rid in spend else {})})
        if rid in outcomes:
            tracker.set_tags(rrun, {"outcome": outcomes[rid]["outcome"]})
        tracker.end_run(rrun)
    failed = verdict(counts, outcomes)
    if failed:
        tracker.set_tags(run.campaign_run, {"aar.verdict": failed})
    tracker.end_run(run.campaign_run, "FAILED" if failed else "FINISHED")
    return failed


def run_campaign(cfg: CampaignConfig) -> Path:
    """Run (or resume) a campaign; returns the path of its report.md. Raises CampaignFailed (after
    writing the report) when no researcher trial finished."""
    import ray

    from aar_ray.campaign.heldout import run_heldout_and_audits
    from aar_ray.report import build_report

    sandbox = sandbox_requirement(cfg)  # before anything starts
    run = open_run(cfg)
    share_trials_view(run)
    _STOPPING["campaign_id"] = run.cfg.campaign_id
    run.tracker.set_tags(run.campaign_run, {"aar.sandbox.require": ",".join(sandbox.required) or "none"})
    print(f"[aar] {sandbox.describe()}", flush=True)
    started_ray = connect_ray(run.cfg, namespace=f"aar-{run.cfg.campaign_id}")
    install_stop_handlers()  # ray.init replaced them with its own, which dies on SIGTERM without a word
    progress = Progress(run.cfg.progress, [(r, run.directions[r]) for r in run.rids])
    try:
        run.cfg, note = fit_to_cluster(run.cfg, *cluster_gpus())
        if note:
            print(f"[aar] {note}", flush=True)
        env = worker_env()
        svc = start_services(run.cfg, run.run_dir, run.experiment_id, run.researcher_runs, env, sandbox.required,
                             vault.from_env())
        ray.get(svc.forum.set_stop.remote(None))
        score_baselines(run, svc)
        resubmit_unfinished(run, svc)
        outcomes = research(run, svc, progress, env)
        drain(run, svc, progress)
        run_heldout_and_audits(run.cfg, svc, progress, run.t_start)
        failed = log_summary(run, svc, outcomes)
    finally:
        progress.close()
        if started_ray:
            ray.shutdown()
    report = build_report(run.cfg.campaign_id, run.run_dir, run.tracker)
    if failed:
        print(f"aar: campaign {run.cfg.campaign_id} failed: {failed}", file=sys.stderr, flush=True)
    print(f"report: {report}", flush=True)
    if failed:
        raise CampaignFailed(failed)
    return Path(report)


class CampaignFailed(CampaignError):
    """The campaign ran but produced no result (its report says why)."""


_STOPPING: dict = {}  # what the stop handler needs to say how to resume: preset, overrides, campaign_id


def _on_stop(signum, frame):
    """SIGTERM (`ray job stop`, a scheduler) or SIGINT: say how to resume, then stop. Everything
    recorded so far stays; the same campaign_id continues it."""
    cid = _STOPPING.get("campaign_id")
    if cid:
        overrides = [o for o in _STOPPING["overrides"] if not o.startswith("campaign_id=")]
        args = " ".join([_STOPPING["preset"], *overrides, f"campaign_id={cid}"])
        print(f"\n[aar] stopped by {signal.Signals(signum).name}; nothing recorded is lost. To resume: "
              f"ray job submit --working-dir . -- python -m aar_ray campaign {args}   (or: aar submit {args})",
              flush=True)
    raise SystemExit(128 + signum)


def install_stop_handlers() -> None:
    """Route SIGTERM and SIGINT to `_on_stop` when `campaign_main` runs this process (not when a
    library caller does). Called again after `ray.init`, which installs Ray's own handlers."""
    if "preset" in _STOPPING:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _on_stop)


def campaign_main(preset: str, overrides: list[str]) -> int:
    from aar_ray.config import load_config
    from aar_ray.home import check_env

    cfg = load_config(CampaignConfig, preset, overrides)
    check_env()
    _STOPPING.update(preset=preset, overrides=list(overrides))
    install_stop_handlers()
    try:
        run_campaign(cfg)
    except CampaignFailed:
        return 1
    except CampaignError as e:
        print(f"aar: {e}", file=sys.stderr)
        return 2
    return 0
