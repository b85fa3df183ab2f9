"""TaskPool: the driver-side scheduler that decides what runs next and enforces every limit.

Callers (researchers, the campaign) `submit` from any thread and get a JobHandle back at once. One
dispatcher thread owns everything that touches Ray: it starts jobs in fair-share order while fewer
than `max_in_flight` are out, blocks in `ray.wait` on the running ones (the backpressure), kills jobs
at their timeout, retries lost workers and records results exactly once per idempotency key.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import ray

from aar_ray.pool.ledger import Ledger, LedgerEntry, MemoryLedger
from aar_ray.pool.policy import (EPS, Candidate, RunningPiece, backfill_victims, gpu_seconds, over_quota,
                                 pick_dispatch, pick_next, should_retry)
from aar_ray.pool.ray_layer import RayBackend, RayFailure, RunOutcome, WorkerShape
from aar_ray.pool.spec import (ErrorKind, JobError, JobFailed, JobInfo, JobSpec, JobStatus, OwnerStatus,
                               PoolConfig, PoolSnapshot)

log = logging.getLogger(__name__)

OnFinish = Callable[[JobInfo, Any], None]


@dataclass(eq=False)
class _Worker:
    """A GpuWorker actor the pool owns. node_id is None until it is up."""

    actor: Any
    shape: WorkerShape
    ready_ref: Any
    started_mono: float
    node_id: Optional[str] = None
    job: Optional["_Job"] = None
    idle_since: Optional[float] = None

    @property
    def idle(self) -> bool:
        return self.node_id is not None and self.job is None


@dataclass(eq=False)
class _Job:
    """Mutable pool-side state of one submitted job; guarded by the pool lock."""

    spec: JobSpec
    job_id: str
    seq: int
    submitted_at: float
    backfill: bool  # the spec's, until a researcher's submit of the same key promotes it
    queued_mono: float  # when it last entered the queue
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    gpu_seconds: float = 0.0
    started_mono: Optional[float] = None  # set while an attempt executes; None while its worker starts
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    node_id: Optional[str] = None
    error: Optional[JobError] = None
    value: Any = None
    from_ledger: bool = False
    ref: Any = None  # the running attempt's result ref
    worker: Optional[_Worker] = None
    kill_requested: bool = False
    preempted: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class JobHandle:
    """The owner's view of one job: status, result, error, cancel."""

    def __init__(self, pool: "TaskPool", job: _Job) -> None:
        self._pool = pool
        self._job = job

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def key(self) -> Optional[str]:
        return self._job.spec.key

    @property
    def status(self) -> JobStatus:
        return self._job.status

    @property
    def error(self) -> Optional[JobError]:
        return self._job.error if self._job.status.terminal else None

    def done(self) -> bool:
        return self._job.done.is_set()

    def result(self, timeout: Optional[float] = None) -> Any:
        """The job's return value; raises JobFailed for any other ending, TimeoutError if still going."""
        if not self._job.done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still {self._job.status.value} after {timeout} s")
        if self._job.status is JobStatus.DONE:
            return self._job.value
        assert self._job.error is not None
        raise JobFailed(self.job_id, self._job.status, self._job.error)

    def cancel(self) -> bool:
        """Stop the job: a queued one never runs, a running one is killed within a tick.
        False if it had already ended."""
        return self._pool._cancel(self._job)

    def info(self) -> JobInfo:
        return self._pool._info(self._job)

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id}, {self._job.spec.owner}, {self._job.status.value})"


class TaskPool:
    """GPU-aware pool over the current Ray cluster (call `ray.init` first). Use as a context manager
    or call `close()`: closing cancels what is left and stops the pool's worker actors."""

    def __init__(self, config: PoolConfig = PoolConfig(), ledger: Optional[Ledger] = None,
                 on_finish: Optional[OnFinish] = None, backend: Optional[RayBackend] = None) -> None:
        if not ray.is_initialized():
            raise RuntimeError("TaskPool needs a Ray connection: call ray.init(...) first")
        self.config = config
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self._on_finish = on_finish
        self._ray = backend or RayBackend()
        self._lock = threading.RLock()
        self._finished_cv = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._seq = itertools.count()
        self._jobs: dict[str, _Job] = {}
        self._queued: dict[str, _Job] = {}
        self._running: dict[str, _Job] = {}
        self._by_key: dict[str, _Job] = {}
        self._waiting: dict[Any, Union[_Job, _Worker]] = {}  # refs the dispatcher ray.waits on
        self._workers: list[_Worker] = []
        self._charged: dict[str, float] = defaultdict(float)  # GPU-s of finished attempts, per owner
        self._callbacks: list[tuple[JobInfo, Any]] = []
        self._closing = False
        self._crash: Optional[BaseException] = None
        self._gpus_total, self._cpus_total, self._alive_nodes = self._ray.cluster()
        self._last_refresh = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="aar-pool-dispatcher", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        """Queue a job, or return the existing handle / recorded result for a known idempotency key."""
        with self._lock:
            if self._crash is not None:
                raise RuntimeError("the pool's dispatcher crashed") from self._crash
            if self._closing:
                raise RuntimeError("the pool is closed")
            job = self._dedupe(spec) or self._admit(spec)
        self._wake.set()
        self._flush_callbacks()
        return JobHandle(self, job)

    def wait(self, handles: Iterable[JobHandle], num_returns: int = 1,
             timeout: Optional[float] = None) -> tuple[list[JobHandle], list[JobHandle]]:
        """Like ray.wait for handles: (finished, pending) once num_returns finished or timeout passed."""
        handles = list(handles)
        num_returns = min(num_returns, len(handles))
        with self._finished_cv:
            self._finished_cv.wait_for(lambda: sum(h.done() for h in handles) >= num_returns, timeout)
            done = [h for h in handles if h.done()]
        return done, [h for h in handles if not h.done()]

    def snapshot(self) -> PoolSnapshot:
        """Per-owner queued/running/done/failed counts and GPU-seconds, plus cluster totals."""
        with self._lock:
            usage = self._usage(time.monotonic())
            counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for job in self._jobs.values():
                counts[job.spec.owner][_COUNT_FIELD[job.status]] += 1
            owners = {o: OwnerStatus(owner=o, gpu_seconds=usage.get(o, 0.0),
                                     quota_gpu_s=self.config.quota_for(o), **c)
                      for o, c in sorted(counts.items())}
            return PoolSnapshot(owners=owners, gpus_total=self._gpus_total, gpus_held=self._gpus_held(),
                                in_flight=len(self._running), queued=len(self._queued))

    def jobs(self) -> list[JobInfo]:
        """Every job this pool has seen, in submission order."""
        with self._lock:
            return [self._info(j) for j in self._jobs.values()]

    def close(self) -> None:
        """Cancel queued and running jobs, stop the dispatcher and every GpuWorker actor."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        self._thread.join()
        now = time.monotonic()
        with self._lock:
            for job in list(self._queued.values()) + list(self._running.values()):
                self._kill_attempt(job, now)
                self._finish(job, JobStatus.CANCELLED, JobError(ErrorKind.CANCELLED, "pool closed"))
            for worker in list(self._workers):
                self._drop_worker(worker)
        self._flush_callbacks()

    def __enter__(self) -> "TaskPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- submission (caller threads, under the lock) ----------------------------------------

    def _dedupe(self, spec: JobSpec) -> Optional[_Job]:
        """The job that already answers this key: live or done here, or recorded in the ledger."""
        if spec.key is None:
            return None
        known = self._by_key.get(spec.key)
        if known is not None and known.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE):
            if not spec.backfill and not known.status.terminal:
                known.backfill = False  # someone now waits for it: it leaves the backfill class
            return known
        entry = self.ledger.get(spec.key)
        if entry is None:
            return None
        job = self._register(spec)
        job.from_ledger, job.value = True, entry.value
        job.status, job.finished_at = JobStatus.DONE, entry.finished_at
        job.done.set()
        return job

    def _admit(self, spec: JobSpec) -> _Job:
        job = self._register(spec)
        quota = self.config.quota_for(spec.owner)
        used = self._usage(time.monotonic()).get(spec.owner, 0.0)
        if spec.num_gpus > self._gpus_total + EPS:
            self._finish(job, JobStatus.FAILED, JobError(
                ErrorKind.UNSCHEDULABLE, f"asks for {spec.num_gpus} GPUs; the cluster has {self._gpus_total}"))
        elif over_quota(used, quota):
            self._finish(job, JobStatus.QUOTA_EXHAUSTED, _quota_error(spec.owner, used, quota))
        else:
            self._queued[job.job_id] = job
        return job

    def _register(self, spec: JobSpec) -> _Job:
        job = _Job(spec=spec, job_id=uuid.uuid4().hex[:12], seq=next(self._seq), submitted_at=time.time(),
                   backfill=spec.backfill, queued_mono=time.monotonic())
        self._jobs[job.job_id] = job
        if spec.key is not None:
            self._by_key[spec.key] = job
        return job

    def _cancel(self, job: _Job) -> bool:
        with self._lock:
            if job.status is JobStatus.QUEUED:
                self._finish(job, JobStatus.CANCELLED, JobError(ErrorKind.CANCELLED, "cancelled while queued"))
            elif job.status is JobStatus.RUNNING:
                job.kill_requested = True  # the dispatcher owns running jobs; it kills within a tick
            else:
                return False
        self._wake.set()
        self._flush_callbacks()
        return True

    # ---- the dispatcher thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                self._tick()
        except BaseException as err:  # a dead dispatcher must not leave owners waiting forever
            log.exception("task pool dispatcher crashed")
            with self._lock:
                self._crash = err
                for job in list(self._queued.values()) + list(self._running.values()):
                    self._finish(job, JobStatus.FAILED, JobError(ErrorKind.SYSTEM, f"pool dispatcher crashed: {err!r}"))
            self._flush_callbacks()

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_refresh >= self.config.capacity_refresh_s:
                self._refresh_cluster(now)
            self._stop_overdue(now)
            self._stop_over_quota(now)
            self._reap_idle_workers(now)
            self._preempt_backfill(now)
            self._dispatch(now)
            refs = list(self._waiting)
            wait_s = min(self.config.tick_s, self._time_to_next_deadline(now))
        if not refs:
            self._wake.wait(self.config.tick_s)
            self._wake.clear()
        else:
            ready = self._ray.wait(refs, wait_s)
            fetched = [(ref, self._ray.fetch(ref)) for ref in ready]  # ready refs: get does not block
            with self._lock:
                for ref, res in fetched:
                    self._on_ready(ref, res, time.monotonic())
        self._flush_callbacks()

    def _refresh_cluster(self, now: float) -> None:
        self._gpus_total, self._cpus_total, self._alive_nodes = self._ray.cluster()
        self._last_refresh = now
        for w in list(self._workers):
            if w.idle and w.node_id not in self._alive_nodes:
                self._drop_worker(w)  # its node died; handing it a job would only burn an attempt

    def _stop_overdue(self, now: float) -> None:
        for job in list(self._running.values()):
            if job.kill_requested:
                self._kill_attempt(job, now)
                self._finish(job, JobStatus.CANCELLED, JobError(ErrorKind.CANCELLED, "cancelled while running"))
            elif job.started_mono is not None and now - job.started_mono > job.spec.timeout_s:
                self._kill_attempt(job, now)
                self._finish(job, JobStatus.TIMEOUT, JobError(
                    ErrorKind.TIMEOUT, f"killed after timeout_s={job.spec.timeout_s:g} s"))
        for w in list(self._workers):
            if w.node_id is None and now - w.started_mono > self.config.worker_start_timeout_s:
                job = w.job
                self._drop_worker(w)
                if job is not None:
                    job.worker = None
                    self._attempt_failed(job, JobError(ErrorKind.UNSCHEDULABLE, (
                        f"no GPU worker came up within {self.config.worker_start_timeout_s:g} s")))

    def _stop_over_quota(self, now: float) -> None:
        usage = self._usage(now)
        for job in list(self._queued.values()):
            quota = self.config.quota_for(job.spec.owner)
            used = usage.get(job.spec.owner, 0.0)
            if over_quota(used, quota):
                self._finish(job, JobStatus.QUOTA_EXHAUSTED, _quota_error(job.spec.owner, used, quota))

    def _reap_idle_workers(self, now: float) -> None:
        for w in list(self._workers):
            if w.idle and w.idle_since is not None and now - w.idle_since > self.config.idle_worker_ttl_s:
                self._drop_worker(w)

    def _dispatch(self, now: float) -> None:
        while self._queued and len(self._running) < self.config.max_in_flight:
            usage = self._usage(now)
            queued = [_candidate(j) for j in self._queued.values()]
            choice = pick_dispatch(queued, usage, self.config.weights, self._fits, self._fits_idle)
            if choice is None:
                return
            self._launch(self._queued.pop(choice.job_id), now)

    def _fits(self, c: Candidate) -> bool:
        spec = self._queued[c.job_id].spec
        if spec.num_gpus == 0:
            return True  # Ray queues CPU work itself; max_in_flight bounds how much we hand it
        if spec.uses_worker_actor:
            shape = WorkerShape.of(spec)
            if self._idle_worker(shape) is not None:
                return True
            return spec.num_gpus <= self._free_gpus() + self._evictable_gpus(shape) + EPS
        return spec.num_gpus <= self._free_gpus() + self._evictable_gpus(None) + EPS

    def _fits_idle(self, c: Candidate) -> bool:
        """Backfill: the GPUs and the CPUs are free now. (A CPU job handed to Ray beyond the free CPUs would
        queue inside Ray, ahead of researcher jobs that come later.)"""
        spec = self._queued[c.job_id].spec
        if spec.uses_worker_actor and self._idle_worker(WorkerShape.of(spec)) is not None:
            return True  # its idle worker already holds what it needs
        return self._fits(c) and spec.cpus <= self._free_cpus() + EPS

    def _preempt_backfill(self, now: float) -> None:
        """Cancel-on-demand (`PoolConfig.backfill_preempt_after_s`): the researcher job due next, queued that
        long for GPUs, gets the youngest backfill pieces' GPUs; they go back to the queue."""
        after = self.config.backfill_preempt_after_s
        pieces = [j for j in self._running.values() if j.backfill and j.started_mono is not None]
        waiting = [j for j in self._queued.values() if not j.backfill]
        if after is None or not pieces or not waiting:
            return
        due = [_candidate(j) for j in waiting]
        head = self._queued[pick_next(due, self._usage(now), self.config.weights, lambda c: True).job_id]
        if head.spec.num_gpus == 0 or now - head.queued_mono < after or self._fits(_candidate(head)):
            return
        running = [RunningPiece(j.job_id, j.spec.num_gpus, j.started_mono) for j in pieces]
        free = self._free_gpus() + self._evictable_gpus(None)
        for job_id in backfill_victims(head.spec.num_gpus, free, running):
            victim = self._running.pop(job_id)
            self._kill_attempt(victim, now)
            log.info("backfill job %s cancelled for researcher job %s; requeued", job_id, head.job_id)
            victim.status, victim.queued_mono = JobStatus.QUEUED, now
            victim.attempts -= 1  # a preemption is the pool's choice, not a failed attempt
            victim.preempted += 1
            self._queued[job_id] = victim

    def _launch(self, job: _Job, now: float) -> None:
        spec = job.spec
        job.attempts += 1
        job.status = JobStatus.RUNNING
        self._running[job.job_id] = job
        if not spec.uses_worker_actor:
            self._evict_idle_workers(spec.num_gpus, keep=None)
            self._start_attempt(job, self._ray.start_task(spec), now)
            return
        shape = WorkerShape.of(spec)
        worker = self._idle_worker(shape)
        if worker is None:
            self._evict_idle_workers(spec.num_gpus, keep=shape)
            actor, ready_ref = self._ray.start_worker(shape)
            worker = _Worker(actor=actor, shape=shape, ready_ref=ready_ref, started_mono=now)
            self._workers.append(worker)
            self._waiting[ready_ref] = worker
        worker.job, job.worker = job, worker
        if worker.node_id is not None:
            self._start_attempt(job, self._ray.run_on_worker(worker.actor, spec), now)
        # else: the attempt starts (and its timeout clock with it) when the worker reports ready

    def _start_attempt(self, job: _Job, ref: Any, now: float) -> None:
        job.ref, job.started_mono, job.started_at = ref, now, time.time()
        self._waiting[ref] = job

    def _on_ready(self, ref: Any, res: Any, now: float) -> None:
        item = self._waiting.pop(ref, None)
        if isinstance(item, _Worker):
            self._on_worker_ready(item, res, now)
        elif isinstance(item, _Job):
            self._on_result(item, res, now)

    def _on_worker_ready(self, w: _Worker, res: Union[str, RayFailure], now: float) -> None:
        if isinstance(res, RayFailure):
            job = w.job
            self._drop_worker(w)
            if job is not None and job.status is JobStatus.RUNNING:
                job.worker = None
                self._end_attempt(job, now)
                self._attempt_failed(job, JobError(res.kind, f"GPU worker failed to start: {res.message}", res.traceback))
            return
        w.node_id = res
        job = w.job
        if job is not None and job.status is JobStatus.RUNNING and not job.kill_requested:
            job.node_id = w.node_id
            self._start_attempt(job, self._ray.run_on_worker(w.actor, job.spec), now)
        else:
            w.job, w.idle_since = None, now
            if job is not None and job.kill_requested:
                self._finish_killed(job, now)

    def _on_result(self, job: _Job, res: Union[RunOutcome, RayFailure], now: float) -> None:
        worker = job.worker
        self._end_attempt(job, now)
        lost = isinstance(res, RayFailure) and res.kind is ErrorKind.WORKER_LOST
        if worker is not None:
            if lost:
                self._drop_worker(worker)
            else:
                worker.job, worker.idle_since = None, now
        if isinstance(res, RunOutcome):
            job.node_id = res.node_id
        if job.status.terminal:
            return  # ended (cancelled, pool closed) while this result was in flight
        if job.kill_requested:
            self._finish_killed(job, now)
        elif isinstance(res, RunOutcome) and res.ok:
            fault = job.spec.infra_fault(res.value) if job.spec.infra_fault is not None else None
            if fault is None:
                self._complete(job, res.value)
            else:
                self._attempt_failed(job, JobError(ErrorKind.INFRA, fault, result=res.value))
        elif isinstance(res, RunOutcome):
            self._attempt_failed(job, JobError(ErrorKind.USER, res.error, res.traceback))
        else:
            self._attempt_failed(job, JobError(res.kind, res.message, res.traceback))

    def _finish_killed(self, job: _Job, now: float) -> None:
        self._kill_attempt(job, now)
        self._finish(job, JobStatus.CANCELLED, JobError(ErrorKind.CANCELLED, "cancelled while running"))

    def _attempt_failed(self, job: _Job, error: JobError) -> None:
        self._running.pop(job.job_id, None)
        if should_retry(error.kind, job.attempts, job.spec.max_retries, job.spec.retry_exceptions):
            log.info("retrying job %s after attempt %d: %s", job.job_id, job.attempts, error.message)
            job.status, job.error, job.queued_mono = JobStatus.QUEUED, error, time.monotonic()
            self._queued[job.job_id] = job
        else:
            self._finish(job, JobStatus.FAILED, error)

    def _complete(self, job: _Job, value: Any) -> None:
        if job.spec.key is not None:
            entry = LedgerEntry(key=job.spec.key, value=value, owner=job.spec.owner, job_id=job.job_id,
                                gpu_seconds=job.gpu_seconds, finished_at=time.time())
            if not self.ledger.put(entry):
                # Another pool on the same ledger finished this key first: deliver its result, so every
                # submitter of the key sees one value.
                recorded = self.ledger.get(job.spec.key)
                value = recorded.value if recorded is not None else value
        job.value = value
        self._finish(job, JobStatus.DONE, None)

    def _finish(self, job: _Job, status: JobStatus, error: Optional[JobError]) -> None:
        self._queued.pop(job.job_id, None)
        self._running.pop(job.job_id, None)
        job.status, job.error, job.finished_at = status, error, time.time()
        self._callbacks.append((self._info(job), job.value))
        job.done.set()
        self._finished_cv.notify_all()

    def _flush_callbacks(self) -> None:
        """Run on_finish outside the lock, so a callback may call back into the pool."""
        if self._on_finish is None:
            with self._lock:
                self._callbacks.clear()
            return
        with self._lock:
            pending, self._callbacks = self._callbacks, []
        for info, value in pending:
            try:
                self._on_finish(info, value)
            except Exception:
                log.exception("on_finish callback failed for job %s", info.job_id)

    # ---- attempts and workers ---------------------------------------------------------------

    def _end_attempt(self, job: _Job, now: float) -> None:
        """Close the running attempt's books: charge its GPU-seconds and forget its ref and worker."""
        if job.started_mono is not None:
            charge = gpu_seconds(job.spec.num_gpus, job.started_mono, now)
            job.gpu_seconds += charge
            self._charged[job.spec.owner] += charge
        job.started_mono, job.ref, job.worker = None, None, None

    def _kill_attempt(self, job: _Job, now: float) -> None:
        """Stop the running attempt, whatever it is doing, so its GPU is free again."""
        worker, ref = job.worker, job.ref
        if ref is not None:
            self._waiting.pop(ref, None)
        if worker is not None and ref is None:
            worker.job = None  # its worker is still starting: keep it, it becomes idle when up
        elif worker is not None:
            self._drop_worker(worker)  # killing the actor is the only way to stop a Python call
        elif ref is not None:
            self._ray.cancel_task(ref)
        self._end_attempt(job, now)

    def _drop_worker(self, w: _Worker) -> None:
        if w in self._workers:
            self._workers.remove(w)
        self._waiting.pop(w.ready_ref, None)
        self._ray.kill_worker(w.actor)

    def _idle_worker(self, shape: WorkerShape) -> Optional[_Worker]:
        return next((w for w in self._workers if w.idle and w.shape == shape), None)

    def _evictable_gpus(self, keep: Optional[WorkerShape]) -> float:
        return sum(w.shape.num_gpus for w in self._workers if w.idle and w.shape != keep)

    def _evict_idle_workers(self, need_gpus: float, keep: Optional[WorkerShape]) -> None:
        """Stop idle workers of other shapes until need_gpus are free (longest idle first)."""
        idle = sorted((w for w in self._workers if w.idle and w.shape != keep), key=lambda w: w.idle_since or 0.0)
        for w in idle:
            if self._free_gpus() + EPS >= need_gpus:
                return
            self._drop_worker(w)

    def _gpus_held(self) -> float:
        by_workers = sum(w.shape.num_gpus for w in self._workers)
        by_tasks = sum(j.spec.num_gpus for j in self._running.values() if not j.spec.uses_worker_actor)
        return by_workers + by_tasks

    def _free_gpus(self) -> float:
        return self._gpus_total - self._gpus_held()

    def _free_cpus(self) -> float:
        """Cluster CPUs not reserved by the pool's running jobs and its GPU workers."""
        held = sum(w.shape.num_cpus for w in self._workers)
        held += sum(j.spec.cpus for j in self._running.values() if not j.spec.uses_worker_actor)
        return self._cpus_total - held

    def _usage(self, now: float) -> dict[str, float]:
        """GPU-seconds per owner: finished attempts plus the elapsed part of running ones."""
        usage = dict(self._charged)
        for job in self._running.values():
            if job.started_mono is not None:
                usage[job.spec.owner] = usage.get(job.spec.owner, 0.0) + gpu_seconds(
                    job.spec.num_gpus, job.started_mono, now)
        return usage

    def _time_to_next_deadline(self, now: float) -> float:
        deadlines = [j.started_mono + j.spec.timeout_s - now for j in self._running.values()
                     if j.started_mono is not None]
        return max(0.0, min(deadlines, default=self.config.tick_s))

    def _info(self, job: _Job) -> JobInfo:
        with self._lock:
            running = 0.0
            if job.started_mono is not None:
                running = gpu_seconds(job.spec.num_gpus, job.started_mono, time.monotonic())
            return JobInfo(job_id=job.job_id, key=job.spec.key, owner=job.spec.owner, priority=job.spec.priority,
                           num_gpus=job.spec.num_gpus, status=job.status, attempts=job.attempts,
                           gpu_seconds=job.gpu_seconds + running, submitted_at=job.submitted_at,
                           started_at=job.started_at, finished_at=job.finished_at, node_id=job.node_id,
                           error=job.error, from_ledger=job.from_ledger, backfill=job.backfill,
                           preempted=job.preempted)


_COUNT_FIELD = {
    JobStatus.QUEUED: "queued", JobStatus.RUNNING: "running", JobStatus.DONE: "done",
    JobStatus.FAILED: "failed", JobStatus.TIMEOUT: "timed_out", JobStatus.CANCELLED: "cancelled",
    JobStatus.QUOTA_EXHAUSTED: "quota_exhausted",
}


def _candidate(job: _Job) -> Candidate:
    return Candidate(job.job_id, job.spec.owner, job.spec.priority, job.seq, job.spec.num_gpus, job.backfill)


def _quota_error(owner: str, used: float, quota: Optional[float]) -> JobError:
    return JobError(ErrorKind.QUOTA, f"owner {owner!r} used {used:.1f} of its {quota:g} GPU-second quota")
