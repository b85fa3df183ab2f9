"""The campaign's shared services as Ray actors: the scorer, the forum, the budget authority, the
vault (secrets, in memory) and the trial service.

The scorer, the forum and the budget authority are their plain classes (`aar_ray.scoring.Scorer`,
`aar_ray.forum.Forum`, `aar_ray.budget.BudgetAuthority`) made remote as they are: their methods are
the actors' methods. The trial service below owns the
task pool: researchers submit trials to it, a background thread collects finished jobs, has the
scorer score them, updates the forum and tapes when each outcome reached it (`aar_ray.agents.tape`).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

from aar_ray.config import BackfillConfig, CampaignConfig, PoolConfig, ScoringConfig, TrialSettings
from aar_ray.sandbox.contract import TrialOutcome, TrialRequest, TrialState, TrialStatus

DRIVER = "driver"  # owner of the driver's own trials (baselines, held-out, audits)
SCORER, FORUM, TRIALS = "aar-scorer", "aar-forum", "aar-trials"  # named actors of a campaign's namespace


@dataclass(frozen=True)
class Services:
    """Handles of a campaign's actors."""

    scorer: Any
    forum: Any
    trials: Any
    budget: Any  # the BudgetAuthority: LLM spend and the research deadline
    vault: Any = None  # the secrets' actor (`aar_ray.vault`), when there are secrets; held here, since an
    # actor whose last handle is dropped is stopped


def start_services(cfg: CampaignConfig, run_dir, experiment_id: str, researcher_runs: dict[str, str],
                   env: dict, sandbox: tuple[str, ...], secrets: dict[str, str] | None = None,
                   hold: bool = False) -> Services:
    """Start (named, in this campaign's namespace) the vault with `secrets` (if any), the scorer, the
    forum, the budget authority and the trial service. `env` holds no secret (Ray logs runtime envs):
    actors ask the vault (the researchers for the API key, MLflow clients for their credentials).
    `sandbox`: the layers every trial must apply (`requirement.resolve(cfg.sandbox).required`).
    `hold`: finished trials wait for `TrialService.release` (a replay decides when each one lands)."""
    import ray

    from aar_ray import tracking, vault
    from aar_ray.agents.tape import TAPES, TRIALS_TAPE
    from aar_ray.budget import BUDGET, BudgetAuthority
    from aar_ray.forum import Forum
    from aar_ray.scoring import Scorer

    keeper = vault.start_vault(secrets) if secrets else None  # first: the scorer's MLflow client asks it
    opts = {"runtime_env": {"env_vars": env}}
    # a restarted scorer reloads its state; a call that met the restart runs again (it is idempotent)
    retries = cfg.trial.infra_retries
    scorer = ray.remote(num_cpus=0, max_concurrency=8, max_restarts=retries, max_task_retries=retries)(Scorer).options(
        name=SCORER, **opts).remote(cfg.w2s, cfg.scoring, tracking.MlflowTracker(), experiment_id, researcher_runs,
                                    state_path=str(run_dir / "private" / "scorer.json"), exempt=(DRIVER,),
                                    trial=cfg.trial)
    forum = ray.remote(num_cpus=0, max_concurrency=16)(Forum).options(name=FORUM, **opts).remote(
        str(run_dir / "forum.db"), len(cfg.scoring.seeds))
    # held-out and audit jobs block one of its threads each while they run: room for all of them
    trials = ray.remote(num_cpus=0, max_concurrency=64)(TrialService).options(name=TRIALS, **opts).remote(
        cfg.pool, cfg.trial, str(run_dir / "ledger.db"), scorer, forum, tuple(sandbox), cfg.scoring, cfg.backfill,
        str(run_dir / TAPES / TRIALS_TAPE), hold)
    # one call at a time (Ray's default for a sync actor): a reservation's check and record are one step
    budget = ray.remote(num_cpus=0)(BudgetAuthority).options(name=BUDGET, **opts).remote(
        cfg.researcher, cfg.budget.dollars, str(run_dir / "private" / "budget.json"))
    return Services(scorer, forum, trials, budget, keeper)


def infra_fault(outcome: TrialOutcome) -> str | None:
    """The pool's `JobSpec.infra_fault` for trial jobs: a harness fault (sandbox_error) is a failed attempt,
    retried and never recorded as the trial's result; the method's own failures are results."""
    return f"{outcome.status.value}: {outcome.reason}" if outcome.status.harness_fault else None


def outcome_of_failure(e: Exception) -> TrialOutcome:
    """The TrialOutcome of a job the pool could not complete (timeout, cancel, lost worker, harness fault
    past the retries, ...)."""
    from aar_ray.pool import ErrorKind, JobFailed, JobStatus

    if not isinstance(e, JobFailed):
        return TrialOutcome.failure(TrialStatus.SANDBOX_ERROR, f"the trial job raised {type(e).__name__}: {e}")
    if isinstance(e.error.result, TrialOutcome):  # its last attempt's own outcome (a sandbox_error)
        return e.error.result
    if e.status is JobStatus.TIMEOUT:
        status = TrialStatus.TIMEOUT
    elif e.status is JobStatus.CANCELLED:
        status = TrialStatus.CANCELLED
    elif e.status is JobStatus.QUOTA_EXHAUSTED:
        status = TrialStatus.REFUSED
    elif e.error.kind is ErrorKind.USER:  # run_trial itself raised: a harness bug, not the method's doing
        status = TrialStatus.SANDBOX_ERROR
    else:
        status = TrialStatus.LOST
    return TrialOutcome.failure(status, e.error.message)


def method_id(source: str) -> str:
    from aar_ray.w2s.methods import source_hash

    return source_hash(source)


@dataclass(frozen=True)
class _Submitted:
    owner: str
    source: str
    fidelity: str
    name: str


class TrialService:
    """Owns the task pool: runs trial jobs and hands their predictions to the scorer.

    A resumed campaign resubmits unfinished trials: the pool's ledger returns finished jobs'
    recorded outcomes without running them again. With `backfill.enabled`, a producer sends the final
    stage's jobs for the current top trials to the pool as backfill (`aar_ray/campaign/backfill.py`).
    Each outcome that reaches the forum is taped (`tape_path`). With `hold`, a finished job is collected
    only once released (`release`): a replay lands each trial where the record has it, so every tool
    call sees what it saw then.
    """

    def __init__(self, pool_cfg: PoolConfig, settings: TrialSettings, ledger_path: str, scorer: Any, forum: Any,
                 sandbox: tuple[str, ...], scoring: ScoringConfig, backfill: BackfillConfig,
                 tape_path: str | None = None, hold: bool = False):
        from pathlib import Path

        from aar_ray.agents.tape import Tape
        from aar_ray.campaign.backfill import BackfillProducer
        from aar_ray.pool import SqliteLedger, TaskPool
        from aar_ray.sandbox.runner import SandboxLimits

        self.settings = settings
        self.limits = SandboxLimits(require=tuple(sandbox))  # checked by every trial, on every worker
        self.pool = TaskPool(pool_cfg, ledger=SqliteLedger(ledger_path))
        self.scorer, self.forum = scorer, forum
        self.tape = Tape(Path(tape_path) if tape_path else None)
        self.active: dict[str, tuple[Any, _Submitted]] = {}  # trial_id -> (handle, what was submitted)
        self.hold = hold
        self.released: dict[str, bool] = {}  # trial_id -> cancelled (hold mode: what may be collected, and how)
        self.collected: set[str] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._collect, daemon=True).start()
        self.backfill = BackfillProducer(scorer, scoring, lambda *job: self.private_pieces(*job, backfill=True),
                                         backfill.interval_s)
        self.pieces = backfill.enabled  # without backfill, a private job is one job: no child per seed
        if backfill.enabled:
            self.backfill.start()

    def _spec(self, key: str, owner: str, source: str, request: TrialRequest, backfill: bool = False):
        from aar_ray.pool import JobSpec
        from aar_ray.sandbox.trial import run_trial

        s = self.settings
        return JobSpec(fn=run_trial, args=(source, request, self.limits), owner=owner, key=key, num_gpus=s.num_gpus,
                       num_cpus=s.num_cpus, timeout_s=s.timeout_s, max_retries=s.infra_retries,
                       infra_fault=infra_fault, backfill=backfill)

    def submit(self, trial_id: str, owner: str, source: str, fidelity: str, name: str) -> None:
        """A researcher's (or a baseline's) trial; its outcome reaches the forum and the scorer."""
        import ray

        request = ray.get(self.scorer.request.remote(fidelity))
        with self.lock:
            if trial_id in self.active:
                return
            handle = self.pool.submit(self._spec(trial_id, owner, source, request))
            self.active[trial_id] = (handle, _Submitted(owner, source, fidelity, name))

    def private_pieces(self, kind: str, source: str, request: TrialRequest, backfill: bool) -> list:
        """A driver-only job (held-out task, audit) as one pool job per seed (as one job when backfill is
        off), keyed by content; handles."""
        from aar_ray.campaign.backfill import split

        return [self.pool.submit(self._spec(key, DRIVER, source, piece, backfill))
                for key, piece in split(kind, source, request, self.pieces)]

    def run_private(self, kind: str, source: str, request: TrialRequest) -> TrialOutcome:
        """A driver-only job of `kind` ('heldout:math', 'audit:shuffled', ...); blocks until every seed's
        piece ends. A piece backfill ran is answered from the ledger; one it queued or runs is joined."""
        from aar_ray.campaign.backfill import merge

        outcomes = []
        for handle in self.private_pieces(kind, source, request, backfill=False):
            try:
                outcomes.append(handle.result())
            except Exception as e:  # noqa: BLE001 - every way a job ends is an outcome
                outcomes.append(outcome_of_failure(e))
        return merge(outcomes)

    def stop_backfill(self) -> None:
        """The producer sends nothing more (what it sent stays, for the final stage to reuse or join)."""
        self.backfill.stop()

    def backfill_pieces(self) -> dict[str, str]:
        """What the producer sent: piece key -> pool status."""
        return self.backfill.pieces()

    def jobs(self) -> list:
        """Every pool job's `JobInfo` (which ran, which came from the ledger, which were backfill)."""
        return self.pool.jobs()

    def release(self, trial_id: str, cancel: bool = False) -> bool:
        """Hold mode: let this trial's outcome land now, and wait until it has (scored or recorded as
        unscored). `cancel`: the record has it cancelled (after the grace period), so it ends cancelled
        whether or not its job has finished here. False when no such trial was ever submitted."""
        with self.lock:
            if trial_id not in self.active:
                return trial_id in self.collected
            self.released[trial_id] = cancel
            handle = self.active[trial_id][0]
        if cancel:
            handle.cancel()
        while True:
            with self.lock:
                if trial_id not in self.active:
                    return True
            time.sleep(0.1)

    def _collect(self) -> None:
        import ray

        while True:
            time.sleep(0.2)
            with self.lock:
                done = [(t, h, m) for t, (h, m) in self.active.items()
                        if (h.done() or self.released.get(t)) and (not self.hold or t in self.released)]
            for trial_id, handle, sub in done:
                try:
                    self._finish(ray, trial_id, handle, sub)
                except Exception as e:  # one bad result must not stop collecting the others
                    print(f"[aar] collecting trial {trial_id} failed: {e}", flush=True)
                finally:
                    with self.lock:  # a trial counts as busy until it is scored or recorded as unscored
                        self.active.pop(trial_id, None)
                        self.collected.add(trial_id)

    def _finish(self, ray, trial_id: str, handle, sub: _Submitted) -> None:
        from aar_ray.scoring import QueryBudgetExceeded, ScoringError

        if self.released.get(trial_id):  # cancelled by a replay, as recorded
            out = TrialOutcome.failure(TrialStatus.CANCELLED, "cancelled by the replay: as recorded (after the grace "
                                                              "period), or past where the replay stopped")
        else:
            try:
                out = handle.result()
            except Exception as e:  # noqa: BLE001
                out = outcome_of_failure(e)
        if not out.ok:
            self._unscored(ray, trial_id, sub, out.status, out.reason, out.sandbox)
            return
        try:
            info = handle.info()  # the job's own clock: the trial run shows how long the trial really took
            times = (info.started_at, info.finished_at) if info.started_at and info.finished_at else None
            val = ray.get(self.scorer.score.remote(sub.owner, trial_id, sub.name, sub.source, sub.fidelity,
                                                   dict(out.preds), dict(out.losses), times, out.sandbox,
                                                   out.job()))
        except Exception as e:  # budget refusal, invalid predictions, or the scorer lost past its restarts
            cause = getattr(e, "cause", None) or e  # a Ray task error carries the scorer's exception
            status = TrialStatus.REFUSED if isinstance(cause, QueryBudgetExceeded) else \
                TrialStatus.INVALID_OUTPUT if isinstance(cause, ScoringError) else TrialStatus.LOST
            reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            self._unscored(ray, trial_id, sub, status, reason, out.sandbox)
            return
        t = ray.get(self.forum.upsert_trial.remote(trial_id, sub.owner, method_id(sub.source), sub.name,
                                                   sub.fidelity, TrialState.SCORED, val, None, TrialStatus.OK))
        self._taped(t, trial_id, sub.owner, TrialState.SCORED, TrialStatus.OK)

    def _taped(self, t: float, trial_id: str, owner: str, state: TrialState, status: TrialStatus) -> None:
        self.tape.add("trial", t=t, trial_id=trial_id, owner=owner, state=state.value, status=status.value)

    def _unscored(self, ray, trial_id: str, sub: _Submitted, status: TrialStatus, reason: str,
                  sandbox: tuple[str, ...]) -> None:
        """A trial with no score: the researcher sees why on the forum, and MLflow keeps a FAILED run."""
        state = TrialState.of(status)
        shown = f"{status.value}: {reason}" if state is TrialState.FAILED else reason
        if status is not TrialStatus.REFUSED:  # no score, no query: the admitted one is given back
            ray.get(self.scorer.release.remote(sub.owner, trial_id))
        t = ray.get(self.forum.upsert_trial.remote(trial_id, sub.owner, method_id(sub.source), sub.name,
                                                   sub.fidelity, state, None, shown, status))
        self._taped(t, trial_id, sub.owner, state, status)
        try:
            ray.get(self.scorer.record_unscored.remote(sub.owner, trial_id, sub.name, sub.source, sub.fidelity,
                                                       status.value, reason, sandbox))
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
            if self.hold:  # a replay stopped: what it never released ends cancelled, however far its job got
                for trial_id in self.active:
                    self.released.setdefault(trial_id, True)
            self.hold = False  # nothing waits for a release any more
            items = list(self.active.items())
        n = sum(bool(h.cancel()) for _, (h, _) in items)
        deadline = time.time() + 60  # let the collector record the cancelled trials before the driver moves on
        while self.busy() and time.time() < deadline:
            time.sleep(0.2)
        return n
