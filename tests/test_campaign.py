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
    "w2s.strong.facts_pretrain_steps=300", "w2s.weak.pretrain_steps=60", "w2s.weak.facts_pretrain_steps=60",
    "n_researchers=2", "scoring.seeds=[0,1]", "scoring.top_k=1", "scoring.heldout_tasks=[math]",
    "scoring.query_budget=3", "budget.trials=4", "budget.deadline_s=240", "budget.grace_s=60",
    "baselines=[naive,confidence]", "trial.seed_timeout_s=90", "progress=plain", "ray.num_cpus=2",
]


_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(campaign_cache):
    """One base/baseline cache for the campaigns of this module and of those that import it
    (test_claude_campaign, test_replay): they pretrain the same SMALL bases (content-keyed, built
    atomically), so only the first campaign of the session pays for them."""
    _CACHE["dir"] = campaign_cache
    yield campaign_cache
    _CACHE.clear()


def _env(tmp: Path, **extra) -> dict:
    """A campaign subprocess's environment: its own store, runs and cache; no key unless `extra` sets one."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ANTHROPIC_API_KEY")}
    return {**env, "AAR_CACHE_DIR": str(_CACHE.get("dir", tmp / "cache")), "AAR_RUNS_DIR": str(tmp / "runs"),
            "AAR_MLFLOW_DIR": str(tmp / "mlflow"), "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1",
            **extra}


def _campaign(tmp: Path, *overrides: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/quick.yaml"),
                           *SMALL, *overrides], capture_output=True, text=True, env=_env(tmp, **env), timeout=timeout)


def _kill_processes_of(marker: str) -> None:
    """SIGKILL, by pid, every process whose command line names `marker` (a test's private Ray temp dir:
    each Ray process names it)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_campaign(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL a campaign: its driver's process group, then the local Ray it started."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_processes_of(ray_tmp)


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
        rows[cells["trial"]] = (num(cells["val PGR (ranks)"]), num(cells["test PGR"]))
    return rows


def _kill_after_first_scored(tmp: Path, cid: str) -> int:
    """Start campaign `cid`, SIGKILL it (driver and its local Ray) once a researcher trial is scored;
    returns how many were scored by then."""
    import sqlite3

    cmd = [sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/quick.yaml"), *SMALL,
           f"campaign_id={cid}"]
    ray_tmp = f"/tmp/aar-ray-kill-{os.getpid()}"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(tmp, AAR_RAY_TMPDIR=ray_tmp), start_new_session=True)
    forum = tmp / "runs" / cid / "forum.db"
    deadline = time.time() + 400
    scored = 0
    while time.time() < deadline and proc.poll() is None and not scored:
        time.sleep(2)
        if forum.exists():
            try:
                with sqlite3.connect(forum) as db:
                    scored = db.execute("SELECT COUNT(*) FROM trials WHERE status='scored' AND researcher != 'driver'"
                                        ).fetchone()[0]
            except sqlite3.Error:
                continue
    _kill_campaign(proc, ray_tmp)
    return scored


@pytest.mark.slow
def test_small_campaign_killed_resumed_end_to_end_with_budget_stop(tmp_path):
    """SIGKILL a campaign (driver and Ray) once a trial is scored, resume it with the same campaign_id:
    nothing recorded is lost or recorded twice, researchers come back from their state, and the
    finished campaign is whole: MLflow, the budget stop, the held-out stage, audits, report."""
    import sqlite3

    assert _kill_after_first_scored(tmp_path, "e2e") >= 1, "no researcher trial was scored before the kill"
    proc = _campaign(tmp_path, "campaign_id=e2e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("campaign: e2e") and "(resumed)" in lines[0]
    assert lines[-1] == f"report: {tmp_path / 'runs' / 'e2e' / 'report.md'}"
    # the budget counts finished trials, and no trial starts past it: none is cancelled for it
    # (researchers whose shares are used up may finish before the driver sees the budget spent; if it
    # winds down, it counts finished trials)
    assert "winding down" not in proc.stdout or \
        "winding down: the campaign's trial budget is spent (4 of 4 trials finished)" in proc.stdout
    assert "cancelled" not in proc.stdout
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
    # the held-out stage ran on the top-1 (by validation PGR: selection never looks at test) and on
    # naive; the audits say what they did
    held = [t for t in researcher_trials if "heldout_math_pgr_mean" in t.data.metrics]
    assert len(held) == 1  # top_k = 1
    assert held[0].data.metrics["val_pgr_mean"] == \
        pytest.approx(max(t.data.metrics["val_pgr_mean"] for t in researcher_trials))
    assert held[0].data.tags["aar.audit"] == "clean" or set(held[0].data.tags["aar.audit"].split(",")) <= \
        {"teacher-independent", "val-test-gap", "probing"}
    others = [t for t in researcher_trials if t is not held[0]]
    assert all(t.data.tags["aar.audit"] in ("not audited", "probing") for t in others)  # never a silent "clean"
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
        assert test == pytest.approx(t.data.metrics["test_pgr_mean"], abs=6e-5)
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
    # the kill lost nothing: MLflow's trials are the forum's scored ones, each FINISHED; the researchers
    # came back from their persisted state, and none went past its query budget
    forum = tmp_path / "runs" / "e2e" / "forum.db"
    with sqlite3.connect(forum) as db:
        forum_scored = {r[0] for r in db.execute("SELECT trial_id FROM trials WHERE status='scored'")}
        per = dict(db.execute("SELECT researcher, COUNT(*) FROM trials WHERE researcher != 'driver' GROUP BY researcher"))
    assert {t.data.tags["trial_id"] for t in trials} == forum_scored
    assert all(t.info.status == "FINISHED" for t in trials)
    events = [json.loads(l) for f in (tmp_path / "runs" / "e2e" / "transcripts").glob("*.jsonl")
              for l in f.read_text().splitlines()]
    assert any(e["kind"] == "restored" and e["step"] > 0 for e in events)
    assert all(n <= 3 for n in per.values()) and sum(per.values()) == 4


def test_claude_preset_without_key_fails_fast(tmp_path):
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/standard.yaml"),
                           "brain=claude"], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "ANTHROPIC_API_KEY is not set" in proc.stderr
    assert time.time() - t0 < 60
    assert not (tmp_path / "runs").exists()  # nothing started, nothing half-written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkout(dest: Path) -> str:
    """A checkout of this working tree (tracked and untracked-not-ignored files) with one commit: what
    a user submits from. Returns its git SHA."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            (dest / f).write_bytes((ROOT / f).read_bytes())
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True).stdout.strip()


def _scored(forum: Path) -> list[str]:
    import sqlite3

    if not forum.exists():
        return []
    try:
        with sqlite3.connect(forum) as db:
            return [r[0] for r in db.execute("SELECT trial_id FROM trials WHERE status='scored' AND researcher != "
                                             "'driver'")]
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_ray_job_submit_stop_and_resubmit_keep_results_in_the_lasting_home(tmp_path):
    """As a user runs it: `aar submit` (ray job submit) from a checkout to a loopback head, `ray job
    stop` mid-run, resubmit the same campaign_id after ignored folders appear in the checkout. The
    results land in the checkout's results home (not Ray's temporary copy), the campaign resumes
    without re-running what finished, `aar report` rebuilds from the checkout, runs carry the SHA."""
    venv_bin = str(Path(sys.executable).parent)
    checkout = tmp_path / "checkout"
    sha = _checkout(checkout)
    env = _env(tmp_path, PATH=f"{venv_bin}:{os.environ['PATH']}", RAY_AUTH_MODE="disabled")
    for k in ("AAR_RUNS_DIR", "AAR_MLFLOW_DIR", "PYTHONPATH"):  # the results home decides: the checkout
        env.pop(k, None)
    user = {**env, "PYTHONPATH": str(checkout)}  # the user's shell, in the checkout
    port, dash, agent = _free_port(), _free_port(), _free_port()
    temp = Path(f"/tmp/aar-rj-{os.getpid()}")  # Ray's socket paths must stay under 107 bytes
    start = subprocess.run([f"{venv_bin}/ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2",
                            f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=180)  # the job imports its upload
    assert start.returncode == 0, start.stderr
    address = f"http://127.0.0.1:{dash}"
    submit = [sys.executable, "-m", "aar_ray", "submit", "experiments/quick.yaml", *SMALL, "campaign_id=job",
              "budget.trials=3", "n_researchers=1", "--address", address]
    runs_dir = checkout / "runs" / "job"
    try:
        for _ in range(30):  # the head's job agent takes a few seconds to come up after `ray start`
            first = subprocess.run([*submit, "--no-wait"], cwd=checkout, env=user, capture_output=True, text=True,
                                   timeout=300)
            if "No available agent" not in first.stdout + first.stderr:
                break
            time.sleep(3)
        job = re.search(r"raysubmit_\w+", first.stdout + first.stderr).group(0)
        deadline = time.time() + 420
        while time.time() < deadline and not _scored(runs_dir / "forum.db"):
            time.sleep(2)
        before = _scored(runs_dir / "forum.db")
        assert before, "no researcher trial was scored before the stop"
        subprocess.run([f"{venv_bin}/ray", "job", "stop", f"--address={address}", job], env=env, timeout=120,
                       capture_output=True)
        logs = subprocess.run([f"{venv_bin}/ray", "job", "logs", f"--address={address}", job], env=env, timeout=120,
                              capture_output=True, text=True).stdout
        assert "To resume:" in logs and "campaign_id=job" in logs, logs[-2000:]
        for d in ("runs/stray", ".mlflow/stray", ".aar_cache/stray", "build/stray"):  # ignored: must change nothing
            (checkout / d).mkdir(parents=True, exist_ok=True)
            (checkout / d / "f.txt").write_text("x")
        second = subprocess.run(submit, cwd=checkout, env=user, capture_output=True, text=True, timeout=900)
        assert second.returncode == 0 and "succeeded" in second.stdout.lower(), second.stdout[-3000:] + second.stderr[-2000:]
        assert "campaign: job (resumed)" in second.stdout
        assert re.search(rf"report: {re.escape(str(runs_dir / 'report.md'))}", second.stdout)
    finally:
        _kill_processes_of(str(temp))  # stop only this cluster: its processes carry its temp dir
    # in the lasting home, with the checkout's SHA; every finished trial recorded once and kept
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{checkout / '.mlflow' / 'mlflow.db'}")
    runs = _runs(client, "job")
    assert {r.data.tags["git_sha"] for rs in runs.values() for r in rs if "git_sha" in r.data.tags} == {sha}
    trial_ids = [t.data.tags["trial_id"] for t in runs["trial"]]
    assert len(trial_ids) == len(set(trial_ids)) and set(before) <= set(trial_ids)
    assert not list(temp.glob("**/runs/job"))  # nothing under Ray's temporary copy of the upload
    rep = subprocess.run([sys.executable, "-m", "aar_ray", "report", "job"], cwd=checkout, env=user,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0 and rep.stdout.strip().splitlines()[-1] == f"report: {runs_dir / 'report.md'}"


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
