"""A Claude campaign end to end, as a user runs it: `aar campaign ... brain=claude` with a planted key,
against the scripted Messages API server, through API faults, a driver killed mid-conversation and its
resume; then a search of every file the campaign could have written for the key; then `aar replay` of
the campaign with neither key nor server.

The script, one step per request (the researcher's calls; retries take a step each):
  1 a 200 whose body is not JSON         -> retried
  2 two tool calls in one reply: submit_method(conf_a) and leaderboard
  3 429 with retry-after: 1              -> retried after 1 s
  4 an unknown tool and an invalid input -> two error results
  5 no answer within claude.timeout_s    -> retried
  6 529 overloaded                       -> retried
  7 get_results
  8 held open while the test SIGKILLs the driver and its Ray
  -- the same campaign_id again: the researcher restores from the forum --
  9 a reply whose usage crosses researcher.dollars, with a submit_method that must not run
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aar_ray import tracking
from tests.messages_api_server import MessagesAPIServer, error, hang, raw, reply, text, tool_use, usage
from test_campaign import ROOT, SMALL, _client, _env, _kill_campaign, _runs, shared_cache  # noqa: F401 (the fixture)

KEY = "sk-ant-api03-PLANTED-e2e-4b1d9c0f7a2e-must-never-touch-disk"
PASSWORD = "mlflow-PLANTED-pw-93c1e5aa0d"
CID = "claude-e2e"
TIMEOUT_S = 6  # claude.timeout_s: step 8 must be killed within it (the test kills at once)
SETTINGS = [*SMALL, f"campaign_id={CID}", "brain=claude", "n_researchers=1", "baselines=[naive]",
            "scoring.heldout_tasks=[]", "scoring.query_budget=3", "budget.trials=3", "budget.deadline_s=1200",
            "budget.grace_s=120", "budget.dollars=5", "researcher.dollars=0.5", "researcher.idle_wait_s=2",
            "claude.max_tokens=2000", f"claude.timeout_s={TIMEOUT_S}", "claude.max_retries=3",
            "claude.backoff_base_s=0.05", "claude.backoff_max_s=0.2"]
CONF_A = {"name": "conf_a", "rationale": "Burns' confidence loss", "fidelity": "quick",
          "composition": {"loss": "confidence", "alpha": 0.5}}
CONF_B = {"name": "conf_b", "rationale": "label smoothing", "fidelity": "quick",
          "composition": {"loss": "smoothing", "eps": 0.2}}


def _script(arrived: threading.Event) -> list:
    def kill_point(body: dict) -> dict:
        arrived.set()
        return hang(600)  # never answered: the driver dies first

    return [raw(b'{"id": "msg_bad", "type": "mess'),
            reply([text("Two things at once."), tool_use("submit_method", CONF_A, id="toolu_a"),
                   tool_use("leaderboard", {}, id="toolu_b")]),
            error(429, "rate_limit_error", "slow down", headers={"retry-after": "1"}),
            reply([tool_use("delete_labels", {"all": True}, id="toolu_c"),
                   tool_use("post_finding", {"trial_id": "x"}, id="toolu_d")]),
            hang(TIMEOUT_S + 4),
            error(529, "overloaded_error", "Overloaded"),
            reply([tool_use("get_results", {}, id="toolu_e")]),
            kill_point]


def _files_holding(roots: list[Path], *needles: str) -> list[str]:
    """Every regular file under roots that contains any needle."""
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    data = p.read_bytes()
                    found += [f"{p}: {n}" for n in needles if n.encode() in data]
    return found


def _transcript(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "runs" / CID / "transcripts" / "r0.jsonl").read_text().splitlines()]


@pytest.fixture
def api():
    server = MessagesAPIServer().start()
    yield server
    server.stop()


@pytest.mark.slow
def test_claude_campaign_survives_faults_and_a_resume_and_never_writes_the_key(tmp_path, api):
    ray_tmp = f"/tmp/aar-cc-{os.getpid()}"  # Ray's socket paths must stay under 107 bytes
    env = _env(tmp_path, ANTHROPIC_API_KEY=KEY, MLFLOW_TRACKING_PASSWORD=PASSWORD, ANTHROPIC_BASE_URL=api.base_url,
               AAR_RAY_TMPDIR=ray_tmp)
    cmd = [sys.executable, "-m", "aar_ray", "campaign", str(ROOT / "experiments/quick.yaml"), *SETTINGS]
    arrived = threading.Event()
    api.add(*_script(arrived))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        assert arrived.wait(900), f"the researcher never reached step 8; server saw {len(api.requests)} requests"
    finally:
        _kill_campaign(proc, ray_tmp)
    first_out = proc.stdout.read()
    budget_file = tmp_path / "runs" / CID / "private" / "budget.json"
    deadline = json.loads(budget_file.read_text())["deadline_at"]

    api.add(reply([tool_use("submit_method", CONF_B, id="toolu_f")], usage=usage(300_000, 100)))
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    out = resumed.stdout + resumed.stderr
    try:
        assert resumed.returncode == 0, first_out[-2000:] + out[-4000:]
        assert "(resumed)" in resumed.stdout.splitlines()[0]
        _check_conversation(api, tmp_path, deadline)
        _check_traces(api, tmp_path)
        # the key search: Ray's session logs, MLflow's store and artifacts, runs/ (transcripts, forum,
        # state), the cache
        roots = [Path(ray_tmp), tmp_path / "mlflow", tmp_path / "runs", Path(env["AAR_CACHE_DIR"])]
        assert _files_holding(roots, KEY, PASSWORD) == []
        assert not any(s in text for s in (KEY, PASSWORD) for text in (first_out, out))
        # not a vacuous search: Ray did log the researchers' runtime env (with the non-secret base URL)
        assert _files_holding([Path(ray_tmp)], api.base_url)
        _check_replay(api, tmp_path, env)
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)


def _check_replay(api: MessagesAPIServer, tmp: Path, env: dict) -> None:
    """`aar replay` with no key and no server: the recorded replies (faults and retries included) answer
    the same requests, the call cut short by the kill is made again only after the restart, every tool
    result and the trials' scores match, and the reply past the cap ends the researcher as before."""
    served = len(api.requests)
    bare = {k: v for k, v in env.items() if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                                                      "MLFLOW_TRACKING_PASSWORD")}
    rep = subprocess.run([sys.executable, "-m", "aar_ray", "replay", CID], capture_output=True, text=True, env=bare,
                         timeout=900)
    last = rep.stdout.strip().splitlines()[-1] if rep.stdout.strip() else ""
    assert rep.returncode == 0 and last.startswith("replay: identical: 1 researcher(s)"), \
        rep.stdout[-4000:] + rep.stderr[-3000:]
    assert "4 API calls from the tape" in last and len(api.requests) == served  # the server heard nothing
    events = [json.loads(line) for line in (tmp / "runs" / f"{CID}-replay" / "tapes" / "r0.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("start") == 2  # restarted where the record's actor was
    assert events[-1]["outcome"] == "budget_exceeded" and events[-1]["message"].startswith("dollar budget spent: $0.6")
    assert _files_holding([tmp / "runs" / f"{CID}-replay"], KEY, PASSWORD) == []


def _check_conversation(api: MessagesAPIServer, tmp: Path, deadline: float) -> None:
    """Faults retried, errors answered, the resume truthful, the reply past the cap not acted on."""
    bodies = api.bodies
    assert len(bodies) == 9  # 4 calls answered, 4 retries, the call killed mid-flight
    killed, after = bodies[7], bodies[8]
    assert after["system"] == killed["system"] == bodies[0]["system"]  # the same prompt: the deadline was kept
    assert after["messages"][:-1] == killed["messages"][:-1]
    results = [b for b in after["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert results == [b for b in killed["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert [r["tool_use_id"] for r in results] == ["toolu_e"] and not results[0].get("is_error")
    assert "conf_a" in results[0]["content"] and "not executed" not in json.dumps(after)
    step4 = {b["tool_use_id"]: b for b in bodies[4]["messages"][-1]["content"] if b["type"] == "tool_result"}
    assert "unknown tool 'delete_labels'" in step4["toolu_c"]["content"] and step4["toolu_c"]["is_error"]
    assert "invalid input for post_finding" in step4["toolu_d"]["content"] and step4["toolu_d"]["is_error"]
    step2 = [b["tool_use_id"] for b in bodies[3]["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert step2 == ["toolu_a", "toolu_b"]  # both calls of one reply answered, in order
    budget = json.loads((tmp / "runs" / CID / "private" / "budget.json").read_text())
    assert budget["deadline_at"] == deadline and budget["spent"]["r0"]["dollars"] > 0.5
    with sqlite3.connect(tmp / "runs" / CID / "forum.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM trials WHERE researcher = 'r0'")]
    assert names == ["conf_a"]  # conf_b came in the reply that crossed the cap: never submitted
    events = _transcript(tmp)
    kinds = [e["kind"] for e in events]
    assert kinds.count("restored") == 1 and events[-1]["outcome"] == "budget_exceeded"
    assert events[-1]["message"].startswith("dollar budget spent: $0.6")
    assert [e["name"] for e in events if e["kind"] == "tool"] == ["submit_method", "leaderboard", "delete_labels",
                                                                   "post_finding", "get_results"]
    retries = [e for e in events if e["kind"] == "api_retry"]
    assert [r["reason"].split(":")[0] for r in retries] == ["malformed reply", "HTTP 429 rate_limit_error",
                                                            f"timeout after {TIMEOUT_S:.1f}s", "HTTP 529 overloaded_error"]
    assert retries[1]["delay_s"] == 1.0  # retry-after honoured


def _check_traces(api: MessagesAPIServer, tmp: Path) -> None:
    """One trace per answered call, tagged, linked to the researcher's run, retries as events."""
    import mlflow

    client = _client(tmp)
    runs = _runs(client, CID)
    (researcher,) = runs["researcher"]
    assert researcher.data.tags["outcome"] == "budget_exceeded"
    spent = json.loads((tmp / "runs" / CID / "private" / "budget.json").read_text())["spent"]["r0"]
    assert researcher.data.metrics["dollars"] == pytest.approx(spent["dollars"])  # the authority's count
    exp = researcher.data.tags[tracking.TRACE_EXPERIMENT]
    mlflow.set_tracking_uri(client.tracking_uri)
    traces = sorted(mlflow.search_traces(locations=[exp], return_type="list"), key=lambda t: int(t.info.tags["aar.call"]))
    calls = [e for e in _transcript(tmp) if e["kind"] == "api_call"]
    assert len(traces) == len(calls) == 4 and [t.info.trace_id for t in traces] == [c["trace_id"] for c in calls]
    for t in traces:
        assert (t.info.tags[tracking.TRACE_CAMPAIGN], t.info.tags[tracking.TRACE_RESEARCHER],
                t.info.tags[tracking.TRACE_RUN]) == (CID, "r0", researcher.info.run_id)
    with sqlite3.connect(tmp / "runs" / CID / "forum.db") as db:
        (conf_a,) = [r[0] for r in db.execute("SELECT trial_id FROM trials WHERE name = 'conf_a'")]
    assert [t.info.tags.get(tracking.TRACE_TRIALS) for t in traces] == [conf_a, None, None, None]
    events = [[e.attributes["reason"].split(":")[0] for e in t.data.spans[0].events] for t in traces]
    assert events == [["malformed reply"], ["HTTP 429 rate_limit_error"],
                      [f"timeout after {TIMEOUT_S:.1f}s", "HTTP 529 overloaded_error"], []]
