"""MLflow recording of weak-to-strong runs, against a sqlite store and a real `mlflow server`."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aar_ray import tracking
from aar_ray.w2s import engine

from w2s_helpers import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "sk-ant-api03-PLANTEDFAKEKEY-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AAR_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-PLANTED-98765")
    tracking.provenance.cache_clear()
    return tmp_path


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    os.environ["AAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        cfg = tiny_cfg("methods=[naive,confidence]", "name=tiny_w2s")
        return cfg, engine.train(cfg, progress=False)
    finally:
        os.environ.pop("AAR_CACHE_DIR")


def _all_text(client, run_id) -> str:
    """Everything recorded on a run: params, tags and text artifacts, as one string."""
    run = client.get_run(run_id)
    parts = [repr(run.data.params), repr(run.data.tags)]
    stack = [None]
    while stack:
        path = stack.pop()
        for f in client.list_artifacts(run_id, path):
            if f.is_dir:
                stack.append(f.path)
            else:
                local = client.download_artifacts(run_id, f.path)
                parts.append(Path(local).read_text(errors="replace"))
    return "\n".join(parts)


def check_recorded(client, cfg, result, records, secrets=(FAKE_KEY, "tok-PLANTED-98765")):
    exp = client.get_experiment_by_name(cfg.name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_id = {r.info.run_id: r for r in runs}
    parents = [r for r in runs if r.data.tags.get(tracking.LEVEL) == "w2s"]
    trials = [r for r in runs if r.data.tags.get(tracking.LEVEL) == "trial"]
    seeds = [r for r in runs if r.data.tags.get(tracking.LEVEL) == "seed"]
    assert len(parents) == 1 and len(trials) == 2 and len(seeds) == 4
    for t in trials:  # nesting: invocation -> trial -> seed
        assert t.data.tags[tracking.PARENT] == parents[0].info.run_id
    for s in seeds:
        assert by_id[s.data.tags[tracking.PARENT]].data.tags[tracking.LEVEL] == "trial"
    naive = by_id[records["naive"].run_id]
    m = result.methods["naive"]
    summ = m.summary("test")
    # metrics: per seed, mean and std, with the right values
    assert naive.data.metrics["test_pgr_mean"] == pytest.approx(summ["pgr"]["mean"])
    assert naive.data.metrics["test_pgr_std"] == pytest.approx(summ["pgr"]["std"])
    assert naive.data.metrics["val_pgr_mean"] == pytest.approx(m.summary("val")["pgr"]["mean"])
    # one naming scheme, no per-seed columns on the trial run (they are on its seed runs)
    assert all(re.fullmatch(r"(val|test)_(pgr|transfer_acc|weak_acc|ceiling_acc)_(mean|std)", k)
               for k in naive.data.metrics), sorted(naive.data.metrics)
    # params: the resolved config, flattened
    assert naive.data.params["world.n_entities"] == str(cfg.world.n_entities)
    assert naive.data.params["probe.epochs"] == str(cfg.probe.epochs)
    # tags: provenance
    tags = naive.data.tags
    for key in ("task", "method", "weak_model", "strong_model", "seeds", "git_sha", "git_dirty", "torch_version",
                "transformers_version", "ray_version", "mlflow_version", "device", tracking.CONTENT_KEY):
        assert tags.get(key), key
    assert tags["method"] == "naive" and tags["seeds"] == "0,1" and tags["task"] == "facts"
    # training loss per step on the seed runs
    seed0 = next(s for s in seeds if s.data.tags[tracking.PARENT] == naive.info.run_id and s.data.tags["seed"] == "0")
    hist = client.get_metric_history(seed0.info.run_id, "train_loss")
    assert [h.step for h in hist] == [st for st, _ in m.seeds[0].losses]
    assert hist[0].value == pytest.approx(m.seeds[0].losses[0][1])
    assert seed0.data.metrics["test_pgr"] == pytest.approx(m.seeds[0].pgr["test"])
    # artifacts: method source, resolved config, predictions
    src = Path(client.download_artifacts(naive.info.run_id, "method/naive.py")).read_text()
    assert src == m.source
    conf = Path(client.download_artifacts(naive.info.run_id, "config.yaml")).read_text()
    assert "n_entities: 60" in conf
    preds = Path(client.download_artifacts(seed0.info.run_id, "predictions/seed_0.csv")).read_text().splitlines()
    assert preds[0] == "index,split,prob" and len(preds) == 1 + len(m.predictions[0])
    assert {line.split(",")[1] for line in preds[1:]} == {"val", "test"}
    # secrets never recorded
    for r in runs:
        text = _all_text(client, r.info.run_id)
        for secret in secrets:
            assert secret not in text


def test_sqlite_store_records_everything(env, tiny_result):
    from mlflow.tracking import MlflowClient

    cfg, result = tiny_result
    records = tracking.record_w2s(cfg, result, tracking.MlflowTracker())
    assert tracking.tracking_uri().startswith("sqlite:///") and (env / "mlflow" / "mlflow.db").is_file()
    check_recorded(MlflowClient(tracking.tracking_uri()), cfg, result, records)


def test_no_duplicate_run_for_same_content_key(env, tiny_result):
    from mlflow.tracking import MlflowClient

    cfg, result = tiny_result
    tr = tracking.MlflowTracker()
    exp = tr.experiment("dedup")
    first = tracking.record_trial(tr, exp, cfg, result.methods["naive"], result.baselines)
    second = tracking.record_trial(tr, exp, cfg, result.methods["naive"], result.baselines)
    assert first.created and not second.created and first.run_id == second.run_id
    client = MlflowClient(tracking.tracking_uri())
    trials = client.search_runs([exp], filter_string=f"tags.`{tracking.LEVEL}` = 'trial'")
    assert len(trials) == 1
    # a half-recorded run (a crash mid-record) is replaced, not counted
    client.set_terminated(first.run_id, "RUNNING")
    third = tracking.record_trial(tr, exp, cfg, result.methods["naive"], result.baselines)
    assert third.created and third.run_id != first.run_id
    trials = client.search_runs([exp], filter_string=f"tags.`{tracking.LEVEL}` = 'trial'")
    assert [t.info.run_id for t in trials] == [third.run_id]


def test_generalization_logged_on_the_trial_run(env, tiny_result):
    from mlflow.tracking import MlflowClient

    cfg, result = tiny_result
    tr = tracking.MlflowTracker()
    exp = tr.experiment("gen")
    rec = tracking.record_trial(tr, exp, cfg, result.methods["naive"], result.baselines)
    tracking.log_generalization(tr, rec.run_id, {"math": {"mean": 0.4, "std": 0.1}, "code": {"mean": 0.2, "std": 0.05}})
    m = MlflowClient(tracking.tracking_uri()).get_run(rec.run_id).data.metrics
    assert m["heldout_math_pgr_mean"] == pytest.approx(0.4) and m["heldout_code_pgr_std"] == pytest.approx(0.05)


def test_redact_secrets(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    assert tracking.redact(f"x {FAKE_KEY} y") == "x *** y"
    assert tracking.redact({"api_key": "abcdefgh", "content_key": "k1", "n": 3, "nested": [FAKE_KEY]}) == {
        "api_key": "***", "content_key": "k1", "n": 3, "nested": ["***"]}


def wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 90) -> None:
    """Poll an MLflow server's /health until it answers OK; fail if its process exits or time runs out."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK":
                return
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, f"{what} did not start"
        time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server_artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, "mlflow server")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_remote_server_records_everything_and_serves_ui(env, tiny_result, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg, result = tiny_result
    records = tracking.record_w2s(cfg, result, tracking.MlflowTracker())
    assert not (env / "mlflow" / "mlflow.db").exists()  # nothing went to the local store
    check_recorded(MlflowClient(mlflow_server), cfg, result, records)
    html = urllib.request.urlopen(mlflow_server + "/", timeout=10).read().decode()
    assert "<html" in html.lower() and "mlflow" in html.lower()


def test_ui_serves_mlflow_and_a_second_start_says_so(env, tiny_result):
    cfg, result = tiny_result
    tracking.record_w2s(cfg, result, tracking.MlflowTracker())
    port = free_port()
    cli = [sys.executable, "-m", "aar_ray", "ui", "--port", str(port)]
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, "aar ui")
        html = urllib.request.urlopen(url + "/", timeout=10).read().decode()
        assert "<html" in html.lower() and "mlflow" in html.lower()
        # the UI's API sees the recorded experiment over the default (sqlite) store
        import json as _json
        req = urllib.request.Request(url + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny_w2s")
        assert _json.loads(urllib.request.urlopen(req, timeout=10).read())["experiment"]["name"] == "tiny_w2s"
        second = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0 and "already running" in second.stdout
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    # a port held by something that is not MLflow gives a clear error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = subprocess.run([sys.executable, "-m", "aar_ray", "ui", "--port", str(s.getsockname()[1])],
                              capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and "taken by another program" in busy.stderr
