"""The campaign's trial service on a real local Ray, with its real scorer and forum actors: a trial whose
first attempt meets a harness fault is retried and scored once; a method's failure is final; either
way the trial's MLflow run carries the sandbox layers it ran under. Meanwhile backfill runs the top
trials' held-out and audit pieces, and the final stage reuses them."""
from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from aar_ray import tracking

from w2s_helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
SMALL = [f"w2s.{o}" for o in TINY if not o.startswith(("seeds", "torch_threads"))] + [
    "scoring.seeds=[0]", "trial.seed_timeout_s=240", "trial.timeout_s=600", "baselines=[naive]",
    "backfill.enabled=true", "backfill.interval_s=1"]  # (quick.yaml turns backfill off)
BROKEN = "def run(ctx):\n    raise ValueError('the method is broken')\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray

    from aar_ray.campaign import driver, services
    from aar_ray.config import CampaignConfig, load_config

    d = tmp_path_factory.mktemp("trial-service")
    faults = d / "faults"
    faults.mkdir()
    old = {k: os.environ.get(k) for k in ("AAR_CACHE_DIR", "AAR_MLFLOW_DIR", "MLFLOW_TRACKING_URI")}
    os.environ.update(AAR_CACHE_DIR=str(d / "cache"), AAR_MLFLOW_DIR=str(d / "mlflow"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config(CampaignConfig, ROOT / "experiments/quick.yaml", SMALL)
    sandbox = driver.sandbox_requirement(cfg)
    exp = tracking.MlflowTracker().experiment("aar-campaign/trial-service")
    env = {**driver.worker_env(), "AAR_FAULT_DIR": str(faults)}  # the workers' fault-injection folder
    ray.init(num_cpus=2, namespace="aar-trial-service", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env}, _temp_dir=f"/tmp/aar-ts-{os.getpid()}")
    try:
        svc = services.start_services(cfg, d / "run", exp, {}, env, sandbox.required)
        ray.get(svc.trials.busy.remote())
        yield {"svc": svc, "faults": faults, "run": d / "run", "exp": exp, "sandbox": sandbox.required, "cfg": cfg}
    finally:
        ray.shutdown()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_a_private_job_splits_into_one_seed_pieces_keyed_by_content_and_merges_back():
    import torch

    from aar_ray.campaign.backfill import merge, piece_key, split
    from aar_ray.config import FinetuneConfig, ProbeConfig
    from aar_ray.sandbox.contract import SeedInputs, StudentSpec, TrialLimits, TrialOutcome, TrialRequest, TrialStatus

    ids, src = torch.zeros(4, 3, dtype=torch.long), "def run(ctx):\n    return ctx.weak_labels\n"
    request = TrialRequest(tuple(SeedInputs(s, ids, ids, torch.full((4,), 0.5), ids, ids) for s in (0, 1, 2)),
                           StudentSpec("/m", "k", "cpu", "float32"), ProbeConfig(), "probe", FinetuneConfig(), "full", 8,
                           TrialLimits(60, 512, 1))
    pieces = split("heldout:math", src, request)
    assert [p.seed_numbers for _, p in pieces] == [[0], [1], [2]] and pieces[0][1].student == request.student
    assert [k for k, _ in pieces] == [piece_key("heldout:math", src, s) for s in (0, 1, 2)]
    (whole,) = split("heldout:math", src, request, pieces=False)  # a campaign without backfill: one child
    assert whole[0] == piece_key("heldout:math", src, "0+1+2") and whole[1].seed_numbers == [0, 1, 2]
    # the key follows what changes the result: the job, the method's source, the seed
    assert len({piece_key("heldout:math", src, 0), piece_key("heldout:code", src, 0),
                piece_key("heldout:math", src + "#", 0), piece_key("heldout:math", src, 1)}) == 4
    ok = [TrialOutcome(TrialStatus.OK, "", ("rlimits", "seccomp"), "cpu", "float32", preds={s: torch.full((2,), s / 10)},
                       losses={s: ((1, 0.5),)}, wall_s=1.0, timings={"run_s": 2.0, "peak_gpu_mb": 10.0 * (s + 1)})
          for s in (0, 1, 2)]
    merged = merge(ok)
    assert merged.ok and sorted(merged.preds) == [0, 1, 2] and float(merged.preds[2][0]) == pytest.approx(0.2)
    assert merged.layers == ("rlimits", "seccomp") and sorted(merged.losses) == [0, 1, 2]
    assert merged.wall_s == 3.0 and merged.timings == {"run_s": 6.0, "peak_gpu_mb": 30.0}
    bad = TrialOutcome.failure(TrialStatus.FAILED, "seed 1: the method is broken")
    assert merge([ok[0], bad, ok[2]]) is bad  # a job with a failed seed is not a result


def _row(run: Path, trial_id: str, timeout_s: float = 600) -> tuple:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with sqlite3.connect(run / "forum.db") as c:
            row = c.execute("SELECT status, error FROM trials WHERE trial_id=? AND status != 'queued'",
                            (trial_id,)).fetchone()
        if row:
            return row
        time.sleep(0.5)
    raise AssertionError(f"{trial_id} did not finish in {timeout_s} s")


def _runs(exp: str, trial_id: str) -> list:
    return tracking.MlflowTracker().client.search_runs([exp], f"tags.trial_id = '{trial_id}'")


def test_harness_fault_retried_then_scored_once_with_its_layers(service):
    import ray

    from aar_ray.w2s.methods import resolve

    svc, faults = service["svc"], service["faults"]
    (faults / "launch-once").touch()  # the first attempt's launcher fails
    ray.get(svc.trials.submit.remote("r0-t1", "r0", resolve("naive").read_text(), "quick", "naive"))
    assert _row(service["run"], "r0-t1")[0] == "scored"
    assert not (faults / "launch-once").exists()  # the fault was met, and the retry scored
    assert [r["trial_id"] for r in ray.get(svc.scorer.driver_results.remote())].count("r0-t1") == 1
    runs = _runs(service["exp"], "r0-t1")
    assert [r.info.status for r in runs] == ["FINISHED"]  # one run: no unscored record of the failed attempt
    assert runs[0].data.tags[tracking.SANDBOX] == ",".join(service["sandbox"])
    assert set(service["sandbox"]) >= {"rlimits", "landlock", "seccomp", "method-runtime"}
    # what the child ran on, and how fast, on the trial's run (a GPU run adds trial peak GPU memory)
    assert (runs[0].data.tags["aar.device"], runs[0].data.tags["aar.dtype"]) == ("cpu", "float32")
    assert runs[0].data.metrics["samples_per_s"] > 0 and "peak_gpu_mb" not in runs[0].data.metrics
    # the run's clock is the job's: it started before it was scored and lasted as long as the job
    assert runs[0].info.end_time - runs[0].info.start_time > 1000
    with sqlite3.connect(service["run"] / "ledger.db") as c:
        assert c.execute("SELECT COUNT(*) FROM ledger WHERE key='r0-t1'").fetchone()[0] == 1


def test_method_failure_is_final_and_recorded_with_its_layers(service):
    import ray

    svc = service["svc"]
    ray.get(svc.trials.submit.remote("r0-t2", "r0", BROKEN, "quick", "broken"))
    status, error = _row(service["run"], "r0-t2")
    assert status == "failed" and "the method is broken" in error
    (run,) = _runs(service["exp"], "r0-t2")
    assert run.data.tags[tracking.UNSCORED_STATUS] == "failed"
    assert run.data.tags[tracking.SANDBOX] == ",".join(service["sandbox"])


def test_a_scorer_restart_loses_nothing(service):
    """Kill the scorer actor: Ray restarts it (trial.infra_retries), it reloads its state, and the next
    trial's request and score go through."""
    import ray

    from aar_ray.w2s.methods import resolve

    svc = service["svc"]
    before = {r["trial_id"] for r in ray.get(svc.scorer.driver_results.remote())}
    ray.kill(svc.scorer, no_restart=False)
    ray.get(svc.trials.submit.remote("r0-t3", "r0", resolve("confidence").read_text(), "quick", "confidence"))
    assert _row(service["run"], "r0-t3")[0] == "scored"
    after = {r["trial_id"] for r in ray.get(svc.scorer.driver_results.remote())}
    assert after == before | {"r0-t3"}


def test_backfill_runs_the_leaders_final_stage_pieces_and_the_final_stage_reuses_them(service):
    """While the trials above ran, idle capacity ran the held-out evaluations and the shuffled-teacher audit
    of the top trials by validation PGR as one-seed backfill pieces; the final stage finds each in the
    pool's record, runs none again, and the scorer gets every result."""
    import ray

    from aar_ray.campaign.backfill import piece_key
    from aar_ray.campaign.heldout import run_heldout_and_audits, top_methods
    from aar_ray.campaign.progress import Progress

    from aar_ray.w2s.methods import resolve

    svc, cfg = service["svc"], service["cfg"]
    ray.get(svc.trials.submit.remote("r1-t1", "r1", resolve("naive").read_text(), "quick", "naive"))
    row = _row(service["run"], "r1-t1")
    assert row[0] == "scored", row
    top, naive = top_methods(cfg.scoring, ray.get(svc.scorer.driver_results.remote()))
    assert 1 <= len(top) <= cfg.scoring.top_k and naive is None  # (no baseline trial here)
    kinds = ["heldout:math", "heldout:code", "audit:shuffled"]
    keys = {piece_key(kind, ray.get(svc.scorer.source.remote(r["trial_id"])), seed)
            for r in top for kind in kinds for seed in cfg.scoring.seeds}
    deadline = time.time() + 600
    while {k for k, status in ray.get(svc.trials.backfill_pieces.remote()).items() if status == "DONE"} != keys:
        assert time.time() < deadline, ray.get(svc.trials.backfill_pieces.remote())
        time.sleep(1.0)
    before = {j.job_id for j in ray.get(svc.trials.jobs.remote())}
    run_heldout_and_audits(cfg, svc, Progress("plain", []), time.time())
    jobs = [j for j in ray.get(svc.trials.jobs.remote()) if j.key in keys]
    assert {j.job_id for j in jobs} <= before  # the final stage started no job for any piece
    assert Counter(j.key for j in jobs if j.started_at is not None) == Counter(keys)  # each ran once,
    assert all(j.backfill for j in jobs)  # as backfill
    private = {r["trial_id"]: r["private"] for r in ray.get(svc.scorer.driver_results.remote())}
    for r in top:
        assert set(private[r["trial_id"]]) == set(kinds)
        assert all(isinstance(private[r["trial_id"]][k]["mean"], float) for k in kinds)
