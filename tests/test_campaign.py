"""Campaigns end to end on local Ray: MLflow contents, report, budget stop, resume after SIGKILL,
`ray job submit`, and a Claude preset without a key failing fast."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aar_ray import tracking

from w2s_helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
# a small campaign: tiny world and bases, 2 researchers, 2 seeds
# (its math task is sized to have a weak-to-ceiling gap, so held-out PGR is defined)
SMALL = [f"w2s.{o}" for o in TINY if not o.startswith(("seeds", "torch_threads"))] + [
    "w2s.world.math_max=24", "w2s.strong.d_model=64", "w2s.strong.n_layer=2", "w2s.strong.pretrain_steps=300",
    "w2s.weak.pretrain_steps=60",
    "n_researchers=2", "scoring.seeds=[0,1]", "scoring.top_k=1", "scoring.heldout_tasks=[math]",
    "scoring.query_budget=3", "budget.trials=4", "budget.deadline_s=240", "budget.grace_s=60",
    "baselines=[naive,confidence]", "trial.seed_timeout_s=90", "progress=plain", "ray.num_cpus=2",
]


_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One base/baseline cache for this module: every campaign here pretrains the same SMALL bases
    (content-keyed, built atomically), so only the first test pays for it."""
    _CACHE["dir"] = tmp_path_factory.mktemp("campaign-cache")
    yield _CACHE["dir"]
    _CACHE.clear()


def _env(tmp: Path, **extra) -> dict:
    env = {**os.environ, "AAR_CACHE_DIR": str(_CACHE.get("dir", tmp / "cache")), "AAR_RUNS_DIR": str(tmp / "runs"),
           "AAR_MLFLOW_DIR": str(tmp / "mlflow"), "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ANTHROPIC_API_KEY", None)
    return env


def _campaign(tmp: Path, *overrides: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/quick.yaml"),
                           *SMALL, *overrides], capture_output=True, text=True, env=_env(tmp, **env), timeout=timeout)


def _client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")


def _runs(client, cid: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(f"aar-campaign/{cid}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags.get(tracking.LEVEL), []).append(r)
    return out


def _parse_leaderboard(md: str) -> dict[str, tuple[float, float]]:
    """trial id -> (val PGR mean, test PGR mean) from report.md's leaderboard table."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("|") and "test PGR" in l)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        num = lambda s: float(s.split("±")[0])  # noqa: E731
        rows[cells["trial"]] = (num(cells["val PGR"]), num(cells["test PGR"]))
    return rows


@pytest.mark.slow
def test_small_campaign_end_to_end_with_budget_stop(tmp_path):
    proc = _campaign(tmp_path, "campaign_id=e2e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("campaign: e2e")
    assert lines[-1] == f"report: {tmp_path / 'runs' / 'e2e' / 'report.md'}"
    assert "winding down: the campaign's trial budget is spent (4 of 4)" in proc.stdout
    runs = _runs(_client(tmp_path), "e2e")
    camp, researchers, trials = runs["campaign"], runs["researcher"], runs["trial"]
    assert len(camp) == 1 and len(researchers) == 2
    for r in researchers:
        assert r.data.tags[tracking.PARENT] == camp[0].info.run_id
    researcher_trials = [t for t in trials if "aar.baseline" not in t.data.tags]
    baselines = [t for t in trials if "aar.baseline" in t.data.tags]
    assert sorted(t.data.tags["aar.baseline"] for t in baselines) == ["confidence", "naive"]
    # the campaign budget, exactly: every submitted trial has a run, scored or not (a job that failed,
    # timed out, or was cancelled after the grace period is a FAILED/KILLED run with its reason)
    assert len(researcher_trials) == 4, [(t.data.tags.get("trial_id"), t.info.status) for t in researcher_trials]
    unscored = [t for t in trials if tracking.UNSCORED_STATUS in t.data.tags]
    assert all(t.info.status in ("FAILED", "KILLED") and t.data.tags[tracking.UNSCORED_REASON] for t in unscored)
    if unscored:
        print("unscored trials:", [(t.data.tags["trial_id"], t.data.tags[tracking.UNSCORED_STATUS],
                                    t.data.tags[tracking.UNSCORED_REASON][:200]) for t in unscored])
    researcher_trials = [t for t in researcher_trials if t not in unscored]
    trials = [t for t in trials if t not in unscored]
    assert researcher_trials, "no researcher trial was scored"
    rids = {r.info.run_id for r in researchers}
    assert all(t.data.tags[tracking.PARENT] in rids for t in researcher_trials)
    keys = [t.data.tags[tracking.CONTENT_KEY] for t in trials]
    assert len(keys) == len(set(keys))  # no duplicates
    # the held-out stage ran on the top-1 (by test PGR) and on naive, and the audits left flags
    held = [t for t in researcher_trials if "heldout_math_pgr_mean" in t.data.metrics]
    assert len(held) == 1  # top_k = 1
    assert held[0].data.metrics["pgr_mean"] == pytest.approx(max(t.data.metrics["pgr_mean"] for t in researcher_trials))
    assert held[0].data.tags["aar.flags"] in ("none", "teacher-independent", "val-test-gap", "probing") or \
        "," in held[0].data.tags["aar.flags"]
    assert "audit_shuffled_pgr_mean" in held[0].data.metrics  # the shuffled-teacher audit ran on it
    naive = next(t for t in baselines if t.data.tags["aar.baseline"] == "naive")
    assert "heldout_math_pgr_mean" in naive.data.metrics  # the reference line gets held-out numbers too
    # every trial has its seeds nested under it
    assert len(runs["seed"]) == 2 * len(trials)
    # the report's leaderboard matches MLflow
    report = (tmp_path / "runs" / "e2e" / "report.md").read_text()
    board = _parse_leaderboard(report)
    for t in trials:
        val, test = board[t.data.tags["trial_id"]]
        assert val == pytest.approx(t.data.metrics["val_pgr_mean"], abs=6e-5)
        assert test == pytest.approx(t.data.metrics["pgr_mean"], abs=6e-5)
    for name in ("report.html", "pgr_over_time.png"):
        assert (tmp_path / "runs" / "e2e" / name).stat().st_size > 1000
    # transcripts were saved for both researchers
    for rid in ("r0", "r1"):
        events = [json.loads(l) for l in (tmp_path / "runs" / "e2e" / "transcripts" / f"{rid}.jsonl").read_text().splitlines()]
        assert events[-1]["kind"] == "outcome"
    # `aar report` rebuilds the same leaderboard from MLflow alone
    out = tmp_path / "rebuilt"
    rep = subprocess.run([sys.executable, "-m", "aar_ray", "report", "e2e", "--out", str(out)], capture_output=True,
                         text=True, env=_env(tmp_path), timeout=300)
    assert rep.returncode == 0 and rep.stdout.strip().splitlines()[-1] == f"report: {out / 'report.md'}"
    assert _parse_leaderboard((out / "report.md").read_text()) == board


def test_claude_preset_without_key_fails_fast(tmp_path):
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/standard.yaml"),
                           "brain=claude"], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "ANTHROPIC_API_KEY is not set" in proc.stderr
    assert time.time() - t0 < 60
    assert not (tmp_path / "runs").exists()  # nothing started, nothing half-written


@pytest.mark.slow
def test_sigkill_mid_campaign_then_resume_records_every_trial_once(tmp_path):
    cmd = [sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/quick.yaml"), *SMALL,
           "campaign_id=kill", "budget.trials=4"]
    ray_tmp = f"/tmp/aar-ray-kill-{os.getpid()}"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(tmp_path, AAR_RAY_TMPDIR=ray_tmp), start_new_session=True)
    forum = tmp_path / "runs" / "kill" / "forum.db"
    deadline = time.time() + 400
    import sqlite3
    scored = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(2)
        if forum.exists():
            try:
                with sqlite3.connect(forum) as db:
                    scored = db.execute("SELECT COUNT(*) FROM trials WHERE status='scored' AND researcher != 'driver'"
                                        ).fetchone()[0]
            except sqlite3.Error:
                continue
            if scored >= 1:
                break
    assert scored >= 1, "no researcher trial was scored before the kill"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver...
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True)  # ...and the local Ray it started
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "(resumed)" in resumed.stdout.splitlines()[0]
    runs = _runs(_client(tmp_path), "kill")
    trials = runs["trial"]
    keys = [t.data.tags[tracking.CONTENT_KEY] for t in trials]
    assert len(keys) == len(set(keys)), "a trial was recorded twice"
    with sqlite3.connect(forum) as db:
        forum_scored = {r[0] for r in db.execute("SELECT trial_id FROM trials WHERE status='scored'")}
    assert {t.data.tags["trial_id"] for t in trials} == forum_scored  # nothing lost
    assert all(t.info.status == "FINISHED" for t in trials)
    assert len(runs["campaign"]) == 1 and len(runs["researcher"]) == 2
    # researchers came back from their persisted state, and none went past its trial budget
    events = [json.loads(l) for f in (tmp_path / "runs" / "kill" / "transcripts").glob("*.jsonl")
              for l in f.read_text().splitlines()]
    assert any(e["kind"] == "restored" and e["step"] > 0 for e in events)
    with sqlite3.connect(forum) as db:
        per = dict(db.execute("SELECT researcher, COUNT(*) FROM trials WHERE researcher != 'driver' GROUP BY researcher"))
    assert all(n <= 3 for n in per.values()) and sum(per.values()) <= 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_on_a_loopback_head(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    # a loopback-only cluster without Ray's token auth, on both sides (head and job client)
    env = _env(tmp_path, PATH=f"{venv_bin}:{os.environ['PATH']}", RAY_AUTH_MODE="disabled")
    port, dash, agent = _free_port(), _free_port(), _free_port()
    temp = Path(f"/tmp/aar-rj-{os.getpid()}")  # Ray's socket paths must stay under 107 bytes
    start = subprocess.run([f"{venv_bin}/ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2",
                            f"--dashboard-agent-listen-port={agent}",  # not the default: it may be taken
                            f"--temp-dir={temp}", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stderr
    try:
        runtime_env = {"env_vars": {k: env[k] for k in ("AAR_CACHE_DIR", "AAR_RUNS_DIR", "AAR_MLFLOW_DIR",
                                                        "HF_HUB_OFFLINE")}}
        cmd = [f"{venv_bin}/ray", "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", "aar_ray", "campaign",
               "experiments/quick.yaml", *SMALL, "campaign_id=job", "budget.trials=2", "n_researchers=1"]
        for _ in range(30):  # the head's job agent takes a few seconds to come up after `ray start`
            sub = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if "No available agent" not in sub.stdout + sub.stderr:
                break
            time.sleep(3)
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        assert "succeeded" in sub.stdout.lower()
        assert re.search(r"report: .*runs/job/report\.md", sub.stdout)
        assert (tmp_path / "runs" / "job" / "report.md").is_file()
        runs = _runs(_client(tmp_path), "job")
        assert len(runs["campaign"]) == 1 and len(runs["trial"]) >= 3  # 2 baselines + the researcher's trials
    finally:
        # stop only this cluster: every process it started carries its temp dir on the command line
        subprocess.run(["pkill", "-9", "-f", str(temp)], capture_output=True, timeout=60)


@pytest.mark.slow
def test_researcher_actor_killed_mid_campaign_restarts_from_its_state(tmp_path, monkeypatch):
    """Kill one researcher actor while it works: Ray restarts it, it resumes from the forum and
    never resubmits a finished trial. Then a trial whose method raises: the researcher reads the
    error on the forum, and MLflow keeps a FAILED trial run with the reason (nothing submitted is lost)."""
    import sqlite3

    import ray

    from aar_ray.campaign import driver, services
    from aar_ray.campaign.researchers import ResearcherActor
    from aar_ray.config import CampaignConfig, load_config

    for k, v in _env(tmp_path).items():
        if k.startswith(("AAR_", "HF_")):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AAR_TRACKING", raising=False)
    exp = tracking.MlflowTracker().experiment("aar-campaign/kill-actor")
    cfg = load_config(CampaignConfig, ROOT / "experiments/quick.yaml",
                      [*SMALL, "n_researchers=1", "scoring.query_budget=3", "budget.trials=3", "baselines=[naive]"])
    run_dir = tmp_path / "runs" / "kill-actor"
    ray.init(num_cpus=2, namespace="aar-kill-actor", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": driver.worker_env()}, _temp_dir=f"/tmp/aar-ka-{os.getpid()}")
    try:
        sandbox = driver.sandbox_requirement(cfg).required
        svc = services.start_services(cfg, run_dir, exp, {}, driver.worker_env(), sandbox)
        service = svc.trials
        ray.get(service.busy.remote())  # up before the researcher looks it up
        ray.get(svc.forum.set_stop.remote(False))
        actor = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(ResearcherActor).remote(
            "r0", "offline", cfg.directions[0], 0, cfg, time.time() + 400, str(run_dir / "transcripts"), None)
        ref = actor.run.remote()
        db = run_dir / "forum.db"
        deadline = time.time() + 300
        scored = []
        while time.time() < deadline and not scored:
            time.sleep(1)
            if db.exists():
                with sqlite3.connect(db) as c:
                    scored = [r[0] for r in c.execute("SELECT trial_id FROM trials WHERE status='scored'")]
        assert scored, "no trial was scored before the kill"
        ray.kill(actor, no_restart=False)  # a crash: Ray restarts the actor and retries run()
        out = ray.get(ref, timeout=400)
        assert out["outcome"] in ("finished", "deadline")
        with sqlite3.connect(db) as c:
            trials = [r[0] for r in c.execute("SELECT trial_id FROM trials WHERE researcher='r0'")]
        assert len(trials) == len(set(trials)) <= 3
        assert set(scored) <= set(trials)  # finished trials stayed, none was submitted again
        events = [json.loads(l) for l in (run_dir / "transcripts" / "r0.jsonl").read_text().splitlines()]
        assert any(e["kind"] == "restored" for e in events)

        broken = "def run(ctx):\n    raise ValueError('planted failure for the collector test')\n"
        ray.get(service.submit.remote("r0-broken", "r0", broken, "quick", "broken"))
        deadline = time.time() + 240
        row = None
        while time.time() < deadline and not row:
            time.sleep(0.5)
            with sqlite3.connect(db) as c:
                row = c.execute("SELECT status, error FROM trials WHERE trial_id='r0-broken' AND status != 'queued'"
                                ).fetchone()
        assert row and row[0] == "failed" and "planted failure" in row[1], row
        client = tracking.MlflowTracker().client
        runs = client.search_runs([exp], "tags.trial_id = 'r0-broken'")
        assert [r.info.status for r in runs] == ["FAILED"]
        tags = runs[0].data.tags
        assert (tags[tracking.LEVEL], tags["researcher"], tags[tracking.UNSCORED_STATUS]) == ("trial", "r0", "failed")
        assert "ValueError: planted failure" in tags[tracking.UNSCORED_REASON]
        scored_runs = client.search_runs([exp], "tags.`aar.level` = 'trial' and attributes.status = 'FINISHED'")
        assert {r.data.tags["trial_id"] for r in scored_runs} >= set(scored)  # scored trials are recorded too
    finally:
        ray.shutdown()
