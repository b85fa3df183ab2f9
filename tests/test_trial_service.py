"""The campaign's trial service on a real local Ray, with its real scorer and forum actors: a trial whose
first attempt meets a harness fault is retried and scored once; a method's failure is final; either
way the trial's MLflow run carries the sandbox layers it ran under."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from aar_ray import tracking

from w2s_helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
SMALL = [f"w2s.{o}" for o in TINY if not o.startswith(("seeds", "torch_threads"))] + [
    "scoring.seeds=[0]", "trial.seed_timeout_s=240", "trial.timeout_s=600", "baselines=[naive]"]
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
        yield {"svc": svc, "faults": faults, "run": d / "run", "exp": exp, "sandbox": sandbox.required}
    finally:
        ray.shutdown()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


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
