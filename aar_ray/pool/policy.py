"""Scheduling decisions as pure functions: which job runs next, who is over quota, what to retry.

The pool calls these with plain numbers; no Ray, no clocks, no threads, so each rule has an exact
unit test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

from aar_ray.pool.spec import ErrorKind

EPS = 1e-9  # GPU arithmetic is in floats (fractional GPUs); never let 0.1+0.2 block a dispatch


@dataclass(frozen=True)
class Candidate:
    """A queued job as the policy sees it."""

    job_id: str
    owner: str
    priority: int
    seq: int
    """Submission order; ties on fairness and priority go to the older job."""
    num_gpus: float
    backfill: bool = False
    """Below every researcher job: runs only on resources no researcher job is waiting for."""


def owner_queue_order(jobs: Iterable[Candidate]) -> list[Candidate]:
    """One owner's jobs in the order they should run: priority first, then submission order."""
    return sorted(jobs, key=lambda c: (-c.priority, c.seq))


def fair_owner_order(heads: Mapping[str, Candidate], usage: Mapping[str, float],
                     weights: Mapping[str, float]) -> list[str]:
    """Owners by weighted GPU-seconds used, least first; ties go to the owner whose next job is older."""
    return sorted(heads, key=lambda o: (usage.get(o, 0.0) / weights.get(o, 1.0), heads[o].seq))


def pick_next(queued: Sequence[Candidate], usage: Mapping[str, float], weights: Mapping[str, float],
              fits: Callable[[Candidate], bool]) -> Optional[Candidate]:
    """The job to dispatch now, or None.

    Each owner offers only its next job (so priorities hold within an owner); owners are tried in
    fair-share order and the first offered job that fits the free resources wins. A big job that does
    not fit lets smaller jobs of *other* owners backfill, which keeps GPUs busy but can delay it.
    """
    by_owner: dict[str, list[Candidate]] = {}
    for c in queued:
        by_owner.setdefault(c.owner, []).append(c)
    heads = {o: owner_queue_order(cs)[0] for o, cs in by_owner.items()}
    for owner in fair_owner_order(heads, usage, weights):
        if fits(heads[owner]):
            return heads[owner]
    return None


def pick_dispatch(queued: Sequence[Candidate], usage: Mapping[str, float], weights: Mapping[str, float],
                  fits: Callable[[Candidate], bool], fits_idle: Callable[[Candidate], bool]) -> Optional[Candidate]:
    """The job to dispatch now, or None: researcher jobs by `pick_next`; backfill jobs only while no
    researcher job is queued at all, and only where `fits_idle` (resources free now, none promised).

    A researcher job that does not fit yet keeps every backfill job waiting: the GPUs freeing up are
    its, and a backfill piece started on them would make it wait one piece longer.
    """
    researcher = [c for c in queued if not c.backfill]
    if researcher:
        return pick_next(researcher, usage, weights, fits)
    return pick_next(queued, usage, weights, fits_idle)


@dataclass(frozen=True)
class RunningPiece:
    """A running backfill job as the preemption rule sees it."""

    job_id: str
    num_gpus: float
    started: float
    """When its attempt started (any clock); the youngest has the least work to lose."""


def backfill_victims(need_gpus: float, free_gpus: float, running: Sequence[RunningPiece]) -> list[str]:
    """Backfill pieces to cancel so a researcher job needing `need_gpus` fits: the youngest first, as
    few as make room; none when even all of them would not (cancelling them would only lose work)."""
    if need_gpus <= free_gpus + EPS:
        return []
    victims, freed = [], 0.0
    for piece in sorted(running, key=lambda p: -p.started):
        victims.append(piece.job_id)
        freed += piece.num_gpus
        if need_gpus <= free_gpus + freed + EPS:
            return victims
    return []


def over_quota(used_gpu_s: float, quota_gpu_s: Optional[float]) -> bool:
    """An owner may start new work only while strictly under its quota (None = unlimited)."""
    return quota_gpu_s is not None and used_gpu_s >= quota_gpu_s


def should_retry(kind: ErrorKind, attempts: int, max_retries: int, retry_exceptions: bool) -> bool:
    """Retry lost workers and infrastructure faults always, user exceptions only when asked, and never past
    1 + max_retries runs.

    Timeouts, cancellations and quota stops are decisions, not accidents, so they are never retried.
    """
    if attempts > max_retries:
        return False
    if kind in (ErrorKind.WORKER_LOST, ErrorKind.INFRA):
        return True
    return kind is ErrorKind.USER and retry_exceptions


def gpu_seconds(num_gpus: float, start: float, end: float) -> float:
    """GPU-seconds charged for holding num_gpus from start to end (clock skew never charges < 0)."""
    return num_gpus * max(0.0, end - start)


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    if not values:
        return 1.0
    total = sum(values)
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return total * total / (len(values) * squares)
