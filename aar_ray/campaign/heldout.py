"""Driver-only: held-out math and code PGR, and the audits, for the top-k methods by validation PGR
(and naive).

Every job is submitted first (the pool runs them side by side, as resources allow), then the
driver waits on them with `ray.wait` and scores each as it ends. A job done before an interruption
is not run again (its result is in the scorer's state), nor is a piece of one that backfill ran
during the research (`aar_ray/campaign/backfill.py`: the pool's ledger has it by key).
"""
from __future__ import annotations

import time

from aar_ray.campaign.progress import Progress
from aar_ray.campaign.services import DRIVER, Services
from aar_ray.config import CampaignConfig, ScoringConfig


def top_methods(scoring: ScoringConfig, results: list[dict]) -> tuple[list[dict], dict | None]:
    """(the top-k researcher trials by validation PGR, plus naive; the naive baseline trial).

    Selection never looks at test PGR: picking winners on it would bias the very number reported."""
    naive = next((r for r in results if r["researcher"] == DRIVER and r["name"] == "naive"), None)
    ranked = sorted((r for r in results if r["researcher"] != DRIVER), key=lambda r: -r["val_pgr"]["mean"])
    top = ranked[: scoring.top_k]
    return (top + [naive] if naive is not None else top), naive  # the reference line gets held-out numbers too


def private_jobs(scoring: ScoringConfig, r: dict) -> list[tuple[str, dict]]:
    """(kind, request options) of the driver's jobs for one trial, minus those already scored."""
    jobs = [(f"heldout:{t}", {"task": t}) for t in scoring.heldout_tasks]
    if r["researcher"] != DRIVER:
        jobs.append(("audit:shuffled", {"shuffle": True}))
    return [(kind, kw) for kind, kw in jobs if kind not in r["private"]]


def run_heldout_and_audits(cfg: CampaignConfig, svc: Services, progress: Progress, t_start: float) -> None:
    import ray

    ray.get(svc.trials.stop_backfill.remote())  # the top is final now; what backfill sent is reused below
    top, naive = top_methods(cfg.scoring, ray.get(svc.scorer.driver_results.remote()))
    pending: dict = {}  # job ref -> (trial_id, kind)
    for r in top:
        source = svc.scorer.source.remote(r["trial_id"])  # refs as arguments: Ray resolves them, nothing blocks
        for kind, kw in private_jobs(cfg.scoring, r):
            request = svc.scorer.request.remote("full", **kw)
            pending[svc.trials.run_private.remote(kind, source, request)] = (r["trial_id"], kind)
    total = len(pending)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        for ref in ready:
            trial_id, kind = pending.pop(ref)
            out = ray.get(ref)
            if out.ok:
                ray.get(svc.scorer.score_private.remote(trial_id, kind, dict(out.preds)))
            else:
                print(f"[aar] {kind} of {trial_id} failed: {out.status.value}: {out.reason}", flush=True)
        research = [t for t in ray.get(svc.forum.trials.remote()) if t["researcher"] != DRIVER]
        progress.update(research, ray.get(svc.trials.snapshot.remote()), {}, time.time() - t_start,
                        f"held-out/audits {total - len(pending)}/{total}")
    if naive is not None:
        ray.get([svc.scorer.audit_gap.remote(r["trial_id"], naive["trial_id"]) for r in top if r["researcher"] != DRIVER])
