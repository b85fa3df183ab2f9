"""Plain data of the task pool: what a job asks for, what the pool reports back.

Nothing here imports Ray, so the policy and its tests stay pure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Optional

from aar_ray.config import PoolConfig  # noqa: F401 - the pool's policy knobs live with every other setting


class JobStatus(str, Enum):
    """Lifecycle of a job. Every status but QUEUED and RUNNING is terminal."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"  # dispatched to Ray: its worker is starting or executing it
    DONE = "DONE"
    FAILED = "FAILED"  # user exception, lost workers or infra faults past max_retries, or unschedulable
    TIMEOUT = "TIMEOUT"  # killed by the driver at timeout_s
    CANCELLED = "CANCELLED"
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"  # the owner's GPU-second quota ran out before it started

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class ErrorKind(str, Enum):
    """Why a job did not produce a result; decides whether it is retried."""

    USER = "user"  # the job's own code raised; retried only with retry_exceptions
    WORKER_LOST = "worker_lost"  # its worker process or node died; retried up to max_retries
    INFRA = "infra"  # it returned a value its infra_fault says is the infrastructure's fault; retried likewise
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    QUOTA = "quota"
    UNSCHEDULABLE = "unschedulable"  # asks for more than the cluster has, or never got a worker
    SYSTEM = "system"  # Ray rejected the job in a way a retry would not fix (e.g. unpicklable result)


@dataclass(frozen=True)
class JobError:
    """What went wrong, with the remote traceback when the job's own code raised."""

    kind: ErrorKind
    message: str
    traceback: str = ""
    result: Any = None
    """For ErrorKind.INFRA: the value the last attempt returned (e.g. its TrialOutcome)."""


class JobFailed(RuntimeError):
    """Raised by `JobHandle.result()` for any terminal status other than DONE."""

    def __init__(self, job_id: str, status: JobStatus, error: JobError):
        detail = f"\n{error.traceback}" if error.traceback else ""
        super().__init__(f"job {job_id} {status.value}: {error.message}{detail}")
        self.job_id = job_id
        self.status = status
        self.error = error


@dataclass(frozen=True, eq=False)
class JobSpec:
    """One unit of work: a function, its arguments, what it needs and who pays for it."""

    fn: Callable[..., Any]
    """Called as fn(*args, **kwargs) on a Ray worker; must be picklable."""
    owner: str
    """Researcher id; fair share and quotas are per owner."""
    args: tuple = ()
    """Positional arguments."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments."""
    key: Optional[str] = None
    """Idempotency key: a finished key is never run again. None: every submit runs."""
    num_gpus: float = 0.0
    """GPUs, whole (1, 2, ...) or a fraction below 1. Ray sets CUDA_VISIBLE_DEVICES from it."""
    num_cpus: Optional[float] = None
    """CPUs reserved while it runs. None: 1 for CPU-only jobs, 0 for GPU jobs (the GPU is the
    scarce resource, and logical-GPU test boxes have few cores)."""
    memory_bytes: Optional[int] = None
    """Ray `memory` reservation, for placement only (Ray does not cap RSS with it)."""
    priority: int = 0
    """Higher runs first among the same owner's queued jobs; no effect across owners."""
    timeout_s: float = 3600.0
    """Wall-clock limit from the moment it starts on its worker; the driver kills it after."""
    max_retries: int = 2
    """Re-runs after its worker or node died or an infra_fault (and after user exceptions if retry_exceptions)."""
    retry_exceptions: bool = False
    """Also retry when the job's own code raises. Off: the owner gets the traceback at once."""
    infra_fault: Optional[Callable[[Any], Optional[str]]] = None
    """Called in the pool on each value the job returns: a reason when the value reports a fault of the
    infrastructure (a trial's sandbox_error), which makes the attempt a failed one (ErrorKind.INFRA:
    retried up to max_retries, never recorded in the ledger); None for a result."""
    backfill: bool = False
    """Below every researcher job: dispatched only onto resources no queued non-backfill job is waiting for,
    never preempting one. Size it to one short piece (one seed), so a researcher job submitted while it
    runs waits behind at most that piece (and not at all with `PoolConfig.backfill_preempt_after_s`).
    A non-backfill submit of the same key promotes a queued backfill job to a researcher one."""
    fresh_process: bool = False
    """GPU jobs only. False: run on a long-lived GPU worker actor that keeps its GPU between jobs.
    True: a fresh Ray worker process per job (Ray's max_calls=1 for GPU tasks), which frees all
    process state and CUDA memory but costs a process start (~0.5 s on a small box)."""

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"JobSpec.fn must be callable, got {type(self.fn).__name__}")
        if not self.owner:
            raise ValueError("JobSpec.owner must be a non-empty researcher id")
        if self.num_gpus < 0 or (self.num_gpus > 1 and not float(self.num_gpus).is_integer()):
            # Ray's rule: fractions only below one GPU; above that, whole GPUs.
            raise ValueError(f"JobSpec.num_gpus must be a fraction < 1 or a whole number, got {self.num_gpus}")
        if self.num_cpus is not None and self.num_cpus < 0:
            raise ValueError(f"JobSpec.num_cpus must be >= 0, got {self.num_cpus}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"JobSpec.timeout_s must be a positive number, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"JobSpec.max_retries must be >= 0, got {self.max_retries}")

    @property
    def cpus(self) -> float:
        """The CPU reservation after applying the documented default."""
        if self.num_cpus is not None:
            return self.num_cpus
        return 0.0 if self.num_gpus > 0 else 1.0

    @property
    def uses_worker_actor(self) -> bool:
        return self.num_gpus > 0 and not self.fresh_process


@dataclass(frozen=True)
class JobInfo:
    """A consistent snapshot of one job, safe to hand to reports and callbacks."""

    job_id: str
    key: Optional[str]
    owner: str
    priority: int
    num_gpus: float
    status: JobStatus
    attempts: int
    """Times it was dispatched to Ray (1 + retries)."""
    gpu_seconds: float
    """num_gpus x wall time of every attempt, including killed and failed ones."""
    submitted_at: float
    """time.time() of submission."""
    started_at: Optional[float]
    """time.time() its latest attempt started on a ready worker."""
    finished_at: Optional[float]
    node_id: Optional[str]
    """Ray node of the latest attempt, once known."""
    error: Optional[JobError]
    from_ledger: bool
    """True when the result came from the exactly-once ledger without running."""
    backfill: bool
    """Ran (or waits) as backfill, below every researcher job."""
    preempted: int
    """Times a waiting researcher job cancelled its running attempt (backfill only; each restart begins anew)."""


@dataclass(frozen=True)
class OwnerStatus:
    """Per-owner counts for progress bars and reports."""

    owner: str
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    quota_exhausted: int = 0
    gpu_seconds: float = 0.0
    """Charged GPU-seconds: finished attempts plus the elapsed part of running ones."""
    quota_gpu_s: Optional[float] = None


@dataclass(frozen=True)
class PoolSnapshot:
    """The whole pool at one instant."""

    owners: dict[str, OwnerStatus]
    gpus_total: float
    """GPUs Ray reports for the live cluster."""
    gpus_held: float
    """GPUs reserved by the pool: running jobs plus its idle and starting GPU worker actors."""
    in_flight: int
    queued: int
