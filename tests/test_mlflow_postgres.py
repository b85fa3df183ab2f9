"""A real MLflow tracking server on a real PostgreSQL, as infra/mlflow/ deploys it, fed by a Ray worker.

PostgreSQL (the Debian package, .ci/apt/infra.txt) runs from a temporary data directory on a free
loopback port; `mlflow server` runs with the deployment's settings: a postgresql:// backend store,
a proxied local --artifacts-destination, basic auth with the admin from environment variables (when
mlflow's `auth` extra, Flask-WTF, is installed; see AUTH_SKIP). A Ray
task in a separate worker process logs a small run (params, stepped metrics, an artifact, tags, a
nested child run) and the test reads it back whole through MlflowClient, then checks the rows in
PostgreSQL and the artifact file on disk. Every service is started and stopped by a fixture here.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ADMIN_USER, ADMIN_PASSWORD = "aar-admin", "pw-" + uuid.uuid4().hex
DB_USER, DB_PASSWORD = "mlflow", uuid.uuid4().hex  # hex: URL-safe inside postgresql://user:pw@host
STARTUP_TIMEOUT_S = 120
try:
    import flask_wtf  # noqa: F401  # what `mlflow server --app-name basic-auth` needs (mlflow[auth])

    HAVE_AUTH = True
except ImportError:
    HAVE_AUTH = False
AUTH_SKIP = ("mlflow's basic-auth app needs Flask-WTF: pin `mlflow[auth]==3.17.2` in pyproject.toml "
             "(infra/Dockerfile installs it for the deployed server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process this module started (never any other)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port> with password (scram) auth over TCP."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`: bash .ci/install-apt.sh)")
    import psycopg2

    # initdb and postgres refuse to run as root: as root, run them as the package's `postgres` user.
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else None
    root = Path(tempfile.mkdtemp(prefix="aar-pg-"))
    data, log = root / "data", root / "postgres.log"
    pwfile = root / "pw"
    pwfile.write_text(DB_PASSWORD + "\n")
    if as_root:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    proc = None
    try:
        subprocess.run(
            [bindir / "initdb", "-D", data, "-U", DB_USER, f"--pwfile={pwfile}", "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            user=user, check=True, capture_output=True, timeout=120,
        )
        port = _free_port()
        # fsync off and small buffers: a disposable test database on a shared 2-core machine.
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", root,
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "shared_buffers=16MB", "-c", "max_connections=30"],
                user=user, stdout=out, stderr=subprocess.STDOUT,
            )
        dsn = dict(host="127.0.0.1", port=port, user=DB_USER, password=DB_PASSWORD)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(dbname="postgres", connect_timeout=2, **dsn)
                break
            except psycopg2.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"PostgreSQL did not start:\n{_tail(log)}")
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield {**dsn, "dbname": "mlflow",
               # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, and the
               # project pins psycopg2-binary (as infra/mlflow/mlflow.yaml does).
               "uri": f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}/mlflow"}
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # SIGINT: PostgreSQL's "fast" shutdown
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres):
    """`mlflow server` configured like infra/mlflow/mlflow.yaml, on 127.0.0.1:<free port>."""
    root = Path(tempfile.mkdtemp(prefix="aar-mlflow-"))
    artifacts = root / "artifacts"
    auth_ini = root / "basic_auth.ini"
    # As in the deployment's ConfigMap: users in their own SQLite file, admin from the environment.
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    auth_args = []
    if HAVE_AUTH:
        auth_args = ["--app-name", "basic-auth"]
        env.update({
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        })
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    log = root / "server.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             *auth_args,
             "--backend-store-uri", postgres["uri"],
             "--artifacts-destination", artifacts.as_uri()],
            env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not become healthy:\n{_tail(log)}")
            time.sleep(0.5)
        yield {"url": url, "artifacts": artifacts, "log": log}
    finally:
        # Its own session: gunicorn/uvicorn workers go down with it, and nothing else does.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def _log_run(experiment_name: str, cache_dir: str) -> dict:
    """Runs inside a Ray worker process: a tiny real W2S run, recorded through the tracking seam.

    Credentials and the URI come from the worker's environment (MLFLOW_TRACKING_*), exactly as on a
    cluster; `aar_ray.tracking` is the only code that talks to MLflow.
    """
    os.environ["AAR_CACHE_DIR"] = cache_dir
    from aar_ray import tracking
    from aar_ray.config import W2SConfig, load_config
    from aar_ray.w2s import engine
    from w2s_helpers import TINY

    cfg = load_config(W2SConfig, None, TINY + ["methods=[naive]", "seeds=[0]", f"name={experiment_name}"])
    result = engine.train(cfg, progress=False)
    rec = tracking.record_w2s(cfg, result, tracking.MlflowTracker())["naive"]
    m = result.methods["naive"]
    return {"run_id": rec.run_id, "pid": os.getpid(), "pgr": m.seeds[0].pgr["test"], "losses": m.seeds[0].losses,
            "source": m.source, "n_preds": len(m.predictions[0]), "n_entities": cfg.world.n_entities}


def test_ray_worker_logs_to_mlflow_on_postgres_and_reads_back_whole(postgres, mlflow_server, tmp_path):
    import psycopg2
    import ray
    from mlflow.tracking import MlflowClient

    url = mlflow_server["url"]
    worker_env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN_USER,
                  "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD, "MLFLOW_DISABLE_TELEMETRY": "true",
                  "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    experiment_name = f"infra-test-{uuid.uuid4().hex[:8]}"
    # Ship _log_run by value: the worker cannot import this test module by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": worker_env})
    try:
        out = ray.get(ray.remote(num_cpus=0.5)(_log_run).remote(experiment_name, str(tmp_path / "cache")),
                      timeout=600)
    finally:
        ray.shutdown()
    assert out["pid"] != os.getpid()  # logged from a separate worker process

    client = MlflowClient(tracking_uri=url)
    # The reading side authenticates the same way: through the environment.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        run = client.get_run(out["run_id"])
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        exp = client.get_experiment_by_name(experiment_name)
        seeds = client.search_runs([exp.experiment_id], filter_string="tags.`aar.level` = 'seed'")
        loss = client.get_metric_history(seeds[0].info.run_id, "train_loss")
        dl = Path(tempfile.mkdtemp(prefix="aar-dl-"))
        try:
            src = Path(client.download_artifacts(out["run_id"], "method/naive.py", str(dl))).read_text()
            preds = Path(client.download_artifacts(seeds[0].info.run_id, "predictions/seed_0.csv", str(dl))).read_text()
        finally:
            shutil.rmtree(dl, ignore_errors=True)

    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert run.info.experiment_id == exp.experiment_id
    assert run.data.params["world.n_entities"] == str(out["n_entities"])
    assert run.data.metrics["test_pgr_mean"] == pytest.approx(out["pgr"])  # one seed: its mean is itself
    assert run.data.tags["method"] == "naive" and run.data.tags["git_sha"]
    assert [(m.step, round(m.value, 5)) for m in sorted(loss, key=lambda m: m.step)] == [
        (s, round(v, 5)) for s, v in out["losses"]]
    assert src == out["source"]
    assert len(preds.strip().splitlines()) == 1 + out["n_preds"]

    # The backend store really is PostgreSQL: the rows are there.
    conn = psycopg2.connect(**{k: postgres[k] for k in ("host", "port", "user", "password", "dbname")})
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT key, value FROM params WHERE run_uuid = %s", (out["run_id"],))
            assert dict(cur.fetchall()) == run.data.params
            cur.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = %s AND key = 'train_loss'",
                        (seeds[0].info.run_id,))
            assert cur.fetchone()[0] == len(out["losses"])
    finally:
        conn.close()

    # Artifacts were proxied by the server into its --artifacts-destination, not written by the worker
    # to some path of its own.
    stored = list(mlflow_server["artifacts"].rglob("naive.py"))
    assert len(stored) == 1 and stored[0].read_text() == src
    assert out["run_id"] in stored[0].parts


@pytest.mark.skipif(not HAVE_AUTH, reason=AUTH_SKIP)
def test_basic_auth_rejects_anonymous_and_wrong_password(mlflow_server):
    url = mlflow_server["url"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 401
    bad = urllib.request.Request(url, headers={"Authorization": _basic(ADMIN_USER, "wrong")})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 401
    good = urllib.request.Request(url, headers={"Authorization": _basic(ADMIN_USER, ADMIN_PASSWORD)})
    with urllib.request.urlopen(good, timeout=10) as r:
        assert r.status == 200 and "experiments" in json.loads(r.read())


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
