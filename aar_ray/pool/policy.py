"""Scheduling decisions as pure functions: which job runs next, who is over quota, what to retry.

The pool calls these with plain numbers; no Ray, no clocks, no threads, so each rule has an exact
unit test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

from aar_ray.pool.spec import ErrorKind


@dataclass(frozen=True)
class Candidate:
    """A queued job as the policy sees it."""

    job_id: str
    owner: str
    priority: int
    seq: int
    """Submission order; ties on fairness and priority go to the older job."""
    num_gpus: float


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
