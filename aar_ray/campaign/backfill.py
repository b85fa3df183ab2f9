"""Backfill for campaigns: GPUs the researchers leave idle while they think run, below every researcher
job, work the final stage will ask for anyway: the held-out evaluations and the shuffled-teacher audit of
the current top trials by validation PGR (`heldout.top_methods`: the top-k, plus naive).

A private job (one held-out task or audit of one method) is a set of one-seed pieces, each a pool job keyed
by content (`piece_key`: kind, method source hash, seed). The producer sends them as `JobSpec.backfill`
jobs, so a researcher job waits behind at most one seed. The final stage (`TrialService.run_private`)
submits the same keys as ordinary jobs: a piece backfill finished is answered from the ledger, one still
queued or running is joined (and promoted out of backfill). Nothing runs twice.

Nothing here reaches a researcher: the pieces' predictions stay in the trial service's ledger until the
final stage has the scorer score them. The scorer builds a held-out task's inputs when the producer first
asks for them: work the final stage would do anyway, done earlier.
"""
from __future__ import annotations

import threading
from typing import Any

from aar_ray.campaign.heldout import private_jobs, top_methods
from aar_ray.config import ScoringConfig
from aar_ray.sandbox.contract import TrialOutcome, TrialRequest

_HIGHEST = ("peak_gpu_mb", "samples_per_s")  # timings that are peaks or rates; the rest are durations and counts


def piece_key(kind: str, source: str, seed: int | str) -> str:
    """The ledger key of one seed of a private job. What changes its result: the method's source, the job
    (held-out task or audit) and the seed; the tasks and the harness's settings are the campaign's own."""
    from aar_ray.w2s.methods import source_hash

    return f"{kind}:{source_hash(source)}:s{seed}"


def split(kind: str, source: str, request: TrialRequest, pieces: bool = True) -> list[tuple[str, TrialRequest]]:
    """(key, one-seed request) for each seed of `request`, in its order; with `pieces` off, the whole job
    as one (one child for every seed: what a campaign without backfill runs)."""
    if not pieces:
        return [(piece_key(kind, source, "+".join(str(s.seed) for s in request.seeds)), request)]
    return [(piece_key(kind, source, s.seed), request.replace(seeds=(s,))) for s in request.seeds]


def merge(outcomes: list[TrialOutcome]) -> TrialOutcome:
    """A private job's outcome from its pieces' (in seed order): the first failure as it is (its reason
    names its seed); else every seed's predictions and losses, under the layers every piece applied, with
    durations summed and peaks and rates the highest piece's."""
    failed = next((o for o in outcomes if not o.ok), None)
    if failed is not None:
        return failed
    first = outcomes[0]
    timings: dict[str, float] = {}
    for o in outcomes:
        for k, v in o.timings.items():
            timings[k] = max(timings.get(k, v), v) if k in _HIGHEST else timings.get(k, 0.0) + v
    return TrialOutcome(first.status, first.reason, tuple(x for x in first.layers if all(x in o.layers for o in outcomes)),
                        first.device, first.dtype, preds={s: p for o in outcomes for s, p in o.preds.items()},
                        losses={s: v for o in outcomes for s, v in o.losses.items()},
                        wall_s=sum(o.wall_s for o in outcomes), cpu_s=sum(o.cpu_s for o in outcomes), timings=timings)


class BackfillProducer:
    """Runs inside the trial service: every `interval_s` it reads the leaderboard and sends the private
    jobs of trials newly among the top to the pool as backfill pieces.

    `submit(kind, source, request)` hands one private job's pieces to the pool as backfill and returns their
    handles (`TrialService.private_pieces`); `scorer` is the scorer actor."""

    def __init__(self, scorer: Any, scoring: ScoringConfig, submit: Any, interval_s: float):
        self.scorer, self.scoring, self.submit, self.interval_s = scorer, scoring, submit, interval_s
        self.handles: dict[str, Any] = {}  # piece key -> JobHandle
        self.sent: set[tuple[str, str]] = set()  # (trial id, kind) already handed to the pool
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="aar-backfill", daemon=True).start()

    def stop(self) -> None:
        """No new pieces from now on; those sent stay (the final stage reuses or joins them)."""
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.refresh()
            except Exception as e:  # the scorer restarting, say: try again next round
                print(f"[aar] backfill: reading the leaderboard failed: {type(e).__name__}: {e}", flush=True)

    def refresh(self) -> int:
        """Send the private jobs of the current top trials not sent yet; returns how many were sent."""
        import ray

        top, _ = top_methods(self.scoring, ray.get(self.scorer.driver_results.remote()))
        sent = 0
        for r in top:
            for kind, kw in private_jobs(self.scoring, r):
                if self.stopped.is_set():
                    return sent
                if (r["trial_id"], kind) in self.sent:
                    continue
                source = ray.get(self.scorer.source.remote(r["trial_id"]))
                request = ray.get(self.scorer.request.remote("full", **kw))
                handles = self.submit(kind, source, request)
                with self.lock:
                    self.handles.update({h.key: h for h in handles})
                    self.sent.add((r["trial_id"], kind))
                sent += 1
        return sent

    def pieces(self) -> dict[str, str]:
        """Piece key -> its pool status, for every piece sent."""
        with self.lock:
            return {k: h.status.value for k, h in self.handles.items()}
