"""Deterministic replay (`aar replay`): tapes, the replayed brains, and campaigns replayed end to end.

Fast: the tape's request deltas, the comparison, and a Claude researcher recorded against the scripted
Messages API server (faults and retries included) replayed from its tape alone, with no server and no
key. Slow: a small offline campaign recorded and replayed as a user runs it (`aar replay`), identical;
then with one recorded tool result changed, the replay stops there and names it.
"""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from aar_ray.agents import tape
from aar_ray.agents.base import ResearchOutcome
from aar_ray.agents.claude import ClaudeBrain
from aar_ray.agents.prompts import system_prompt
from aar_ray.agents.replay import Divergence, RecordedAPI, ReplayBrain, difference
from aar_ray.agents.researcher import Researcher, ToolExecutor
from aar_ray.campaign.replay import Record
from aar_ray.config import ClaudeConfig, ResearcherBudget
from aar_ray.forum import Forum
from tests.messages_api_server import MessagesAPIServer, error, raw, reply, text, tool_use
from test_campaign import ROOT, SMALL, _env, shared_cache  # noqa: F401 (the fixture: one cache)

# ---------- the tape ----------


def test_tape_stores_requests_as_deltas_and_reads_them_back_whole(tmp_path):
    t = tape.Tape(tmp_path / "r0.jsonl")
    system = [{"type": "text", "text": "You are a researcher." * 50}]
    turn = lambda i: {"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": f"turn {i}"}]}  # noqa: E731
    requests = [{"model": "m", "system": system, "messages": [turn(i) for i in range(n)]} for n in (1, 3, 5)]
    requests.append({"model": "m2", "system": system, "messages": [turn(9), turn(4)]})  # condensed: a new head
    requests.append({"system": system, "messages": [turn(9)]})  # a field gone
    for i, r in enumerate(requests):
        t.exchange(i + 1, r, [{"reply": {"n": i}}])
    stored = [json.loads(line) for line in (tmp_path / "r0.jsonl").read_text().splitlines()]
    assert stored[2]["request"] == {"messages_kept": 3, "messages": [turn(3), turn(4)]}  # only what is new
    assert stored[3]["request"]["model"] == "m2" and stored[3]["request"]["messages_kept"] == 0
    assert stored[4]["request"]["dropped"] == ["model"]
    back = tape.read(tmp_path / "r0.jsonl")
    assert [e["request"] for e in back] == requests and [e["step"] for e in back] == [1, 2, 3, 4, 5]
    with open(tmp_path / "r0.jsonl", "a") as fh:  # a process killed mid-line: its last write never happened
        fh.write('{"t": 1, "kind": "resu')
    assert len(tape.read(tmp_path / "r0.jsonl")) == 5


def test_difference_names_the_first_difference_and_ignores_wall_clock():
    want = {"trials": [{"trial_id": "t1", "status": "scored", "val_pgr": {"mean": 0.42}}], "created": 1.0}
    assert difference(want, {**want, "created": 2.0}) is None  # a timestamp
    got = {"trials": [{"trial_id": "t1", "status": "queued", "val_pgr": {"mean": 0.42}}], "created": 1.0}
    assert difference(want, got) == '.trials[0].status: expected "scored", got "queued"'
    assert difference({"x": 0.1234567}, {"x": 0.1234568}) == ".x: expected 0.1234567, got 0.1234568"  # exact
    assert difference({"x": 0.1234567}, {"x": 0.1234568}, tol=1e-6) is None
    assert difference({"x": [1, 2]}, {"x": [1, 2, 3]}) == ".x: expected 2 items, got 3"
    assert difference({"x": float("nan")}, {"x": float("nan")}) is None
    assert difference({"a": 1}, {"a": 1, "b": 2}) == ".b: expected (absent), got 2"


# ---------- a Claude researcher, recorded, then replayed from its tape alone ----------

KEY = "sk-ant-api03-replay-unit-KEY-5f0c1e"


class _Scorer:
    def queries_left(self, rid: str) -> int:
        return 3


def _researcher(tmp: Path, brain, name: str) -> Researcher:
    """A Claude researcher whose tools are a real forum (the scorer and pool are never reached)."""
    forum = Forum(tmp / name / "forum.db", n_seeds=2)
    forum.post_finding("r9", "naive is the floor to beat")
    budget = ResearcherBudget(idle_wait_s=0.0)
    ex = ToolExecutor("r0", forum, _Scorer(), None, budget, None, None, [0, 1])
    return Researcher("r0", brain, ex, budget, time.time() + 600, tmp / name / "transcripts",
                      tape_dir=tmp / name / "tapes", brain_info={"brain": "claude", "direction": "d", "seed": 0})


def _claude(client=None) -> ClaudeBrain:
    cfg = ClaudeConfig(timeout_s=2.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.04)
    prompt = system_prompt("teacher calibration", researcher="r0", budgets={"trials": 3}, n_seeds=2)
    return ClaudeBrain(cfg, prompt, seed=0, client=client)


def _record_claude(tmp: Path, monkeypatch) -> list[dict]:
    server = MessagesAPIServer().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    server.add(raw(b'{"id": "msg_bad", "type": "mess'),  # a malformed 200: retried
               reply([text("Reading first."), tool_use("read_forum", {}, id="toolu_1"),
                      tool_use("post_finding", {"text": "calibrate the teacher"}, id="toolu_2")]),
               error(529, "overloaded_error", "Overloaded"),  # retried
               reply([tool_use("delete_labels", {}, id="toolu_3"), tool_use("read_forum", {"limit": 1}, id="toolu_4")]),
               reply([tool_use("finish", {"summary": "done"}, id="toolu_5")]))
    try:
        out = _researcher(tmp, _claude(), "record").run()
    finally:
        server.stop()
    assert out["outcome"] == "finished" and len(server.requests) == 5
    return tape.read(tmp / "record" / "tapes" / "r0.jsonl")


def _replay_claude(tmp: Path, name: str, events: list[dict]) -> tuple[str, ClaudeBrain]:
    """Step the replayed researcher until its loop ends (a Divergence propagates: `run` would make it an
    outcome); (the outcome's kind, the brain)."""
    rec = Record("x", tmp, None, 0.0, {"r0": events}, [], {})
    brain = _claude(RecordedAPI("r0", rec.exchanges("r0")))
    r = _researcher(tmp, ReplayBrain("r0", rec.steps("r0"), inner=brain), name)
    try:
        while True:
            r.step()
    except ResearchOutcome as o:
        r.save_transcript(o)
        return o.kind, brain


def _played(events: list[dict]) -> list[dict]:
    """A tape's played events, times aside; an observation (a JSON text) parsed, so that its wall-clock
    fields (seconds left) are told apart from what the brain decided on."""
    kinds = ("observe", "reserve", "act", "result", "exchange")
    out = [{k: v for k, v in e.items() if k != "t"} for e in events if e["kind"] in kinds]
    for e in out:
        if isinstance(e.get("observation"), str) and e["observation"].startswith("{"):
            e["observation"] = json.loads(e["observation"])
    return out


def test_a_claude_conversation_replays_from_its_tape_with_no_server_and_no_key(tmp_path, monkeypatch):
    events = _record_claude(tmp_path, monkeypatch)
    step = ["observe", "reserve", "exchange", "act", "saved"]
    assert [e["kind"] for e in events if e["kind"] != "result"] == ["start", *step, *step, *step, "outcome"]
    first = next(e for e in events if e["kind"] == "exchange")
    assert first["attempts"][0]["fault"].startswith("malformed reply") and "reply" in first["attempts"][1]
    assert all(KEY not in line for line in (tmp_path / "record" / "tapes" / "r0.jsonl").read_text().splitlines())

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens: the tape must answer
    kind, brain = _replay_claude(tmp_path, "replay", events)
    assert kind == "finished" and brain.spend.api_calls == 3
    again = tape.read(tmp_path / "replay" / "tapes" / "r0.jsonl")
    # the same requests (retries included), the same calls, the same tool results: the forum's ids and
    # texts again (its timestamps aside)
    assert difference(_played(events), _played(again)) is None
    transcript = [json.loads(line) for line in (tmp_path / "replay" / "transcripts" / "r0.jsonl").read_text().splitlines()]
    assert [e["reason"].split(":")[0] for e in transcript if e["kind"] == "api_retry"] == [
        "malformed reply", "HTTP 529 overloaded_error"]


def test_a_changed_tape_stops_the_claude_replay_where_it_differs(tmp_path, monkeypatch):
    events = _record_claude(tmp_path, monkeypatch)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    step3 = next(e for e in events if e["kind"] == "observe" and e["step"] == 3)
    step3["handed"][1]["content"] = {"findings": []}  # what the brain was handed at step 3, doctored
    with pytest.raises(Divergence) as d:
        _replay_claude(tmp_path, "doctored", events)
    assert d.value.where == "r0 step 3, tool results handed to the brain"
    assert d.value.diff.startswith("[1].content.findings: expected 0 items, got 1")
    # a reply that asks for something else than the record's brain did
    events = tape.read(tmp_path / "record" / "tapes" / "r0.jsonl")
    act = next(e for e in events if e["kind"] == "act" and e["step"] == 2)
    act["calls"][1]["input"] = {"limit": 2}
    with pytest.raises(Divergence) as d:
        _replay_claude(tmp_path, "doctored2", events)
    assert (d.value.where, d.value.diff) == ("r0 step 2, the brain's calls", "[1].input.limit: expected 2, got 1")


# ---------- campaigns, recorded and replayed as a user runs them ----------

# a small campaign: 2 offline researchers with 1 scored query each, the naive baseline, the tiny world
# (pinned: SMALL's w2s.world.seed=0) with tiny bases, 2 seeds; no held-out task (the top trial's
# shuffled-teacher audit still runs, and is replayed)
CAMPAIGN = [*SMALL, "w2s.strong.d_model=32", "w2s.strong.n_layer=1", "w2s.strong.pretrain_steps=80", "w2s.strong.facts_pretrain_steps=80",
            "baselines=[naive]", "scoring.heldout_tasks=[]", "scoring.query_budget=1", "budget.trials=2",
            "researcher.idle_wait_s=2"]


def _aar(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aar_ray", *args], capture_output=True, text=True, env=_env(home),
                          timeout=timeout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A results home holding campaign `rec`, recorded once for this module's tests."""
    home = tmp_path_factory.mktemp("replay-home")
    proc = _aar(home, "campaign", str(ROOT / "experiments/quick.yaml"), *CAMPAIGN, "campaign_id=rec")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home


def _forum(run_dir: Path) -> dict[str, tuple]:
    with sqlite3.connect(run_dir / "forum.db") as db:
        return {r[0]: r[1:] for r in db.execute("SELECT trial_id, researcher, status, outcome, val_pgr_mean, "
                                                "val_pgr_std, seeds FROM trials")}


def _scores(run_dir: Path) -> dict[str, tuple]:
    trials = json.loads((run_dir / "private" / "scorer.json").read_text())["trials"]
    return {t["trial_id"]: (t["val"]["per_seed"], t["test"]["per_seed"], t["private"]) for t in trials}


@pytest.mark.slow
def test_an_offline_campaign_replays_identically(recorded):
    proc = _aar(recorded, "replay", "rec")
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and last.startswith("replay: identical: 2 researcher(s)"), \
        proc.stdout[-4000:] + proc.stderr[-3000:]
    rec, rep = recorded / "runs" / "rec", recorded / "runs" / "rec-replay"
    # the same trials, each with its status, outcome and validation numbers, and the same scorer numbers
    # (val and test per seed, the audit's): every trial ran again, for real, in the replay's own pool
    assert _forum(rep) == _forum(rec) and len(_forum(rec)) == 3
    assert _scores(rep).keys() == _scores(rec).keys()
    for tid, (val, test, private) in _scores(rec).items():
        got = _scores(rep)[tid]
        assert got[0] == pytest.approx(val, abs=1e-6) and got[1] == pytest.approx(test, abs=1e-6)
        assert got[2].keys() == private.keys()
    assert any(p for _, _, p in _scores(rec).values())  # the audit was recorded, and replayed
    assert re.search(r", [1-9]\d* tool results, 3 trials", last)
    # the replay keeps its own tapes: the same steps, calls and results as the record's, times aside
    for rid in ("r0", "r1"):
        want, got = (tape.read(d / "tapes" / f"{rid}.jsonl") for d in (rec, rep))
        assert difference(_played(want), _played(got)) is None
    # and its own MLflow experiment, with a trial run per trial
    client = MlflowClient(f"sqlite:///{recorded / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("aar-campaign/rec-replay")
    runs = client.search_runs([exp.experiment_id], "tags.`aar.level` = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(_forum(rec))
    camp = client.search_runs([exp.experiment_id], "tags.`aar.level` = 'campaign'")
    assert [(c.data.tags["aar.replay"], c.data.tags["aar.replay_of"]) for c in camp] == [("identical", "rec")]


def _doctor(home: Path, cid: str) -> tuple[dict, int]:
    """A copy of `rec` as `cid` with r0's first get_results result changed: a queued trial shown as
    scored. (the changed event, its step's index of the call)"""
    shutil.copytree(home / "runs" / "rec", home / "runs" / cid)
    path = home / "runs" / cid / "tapes" / "r0.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    ev = next(e for e in events if e["kind"] == "result" and e["name"] == "get_results"
              and e["content"]["trials"] and e["content"]["trials"][0]["status"] == "queued")
    ev["content"]["trials"][0]["status"] = "scored"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return ev, ev["index"]


@pytest.mark.slow
def test_a_changed_tool_result_stops_the_replay_there(recorded):
    ev, i = _doctor(recorded, "doctored")
    proc = _aar(recorded, "replay", "doctored")
    lines = proc.stdout.strip().splitlines()
    where = f"r0 step {ev['step']} call {i + 1} (get_results {ev['id']})"
    assert proc.returncode == 1 and lines[-1] == \
        f'replay: diverged at {where}: .content.trials[0].status: expected "scored", got "queued"', \
        proc.stdout[-4000:] + proc.stderr[-3000:]
    assert f"replay: {where} differs from the record" in lines  # then the diff: both results in full
    shown = "\n".join(lines[lines.index(f"replay: {where} differs from the record"):])
    assert '"status": "scored"' in shown and '"status": "queued"' in shown
    # it stopped there: r0's replayed tape ends with that call, nothing after it ran
    played = tape.read(recorded / "runs" / "doctored-replay" / "tapes" / "r0.jsonl")
    assert (played[-1]["kind"], played[-1]["step"], played[-1]["index"]) == ("result", ev["step"], i)
    bad = _aar(recorded, "replay", "doctored", "--until", "t-nosuch", timeout=120)
    assert bad.returncode == 2 and "the record has no such trial" in bad.stderr and "base-naive" in bad.stderr


@pytest.mark.slow
def test_replay_until_a_trial_stops_once_it_has_landed(recorded):
    proc = _aar(recorded, "replay", "rec", "--until", "base-naive")
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and last.startswith("replay: identical up to trial base-naive: "), \
        proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = _forum(recorded / "runs" / "rec-replay")
    assert rows["base-naive"][1:3] == ("scored", "ok")
    # what had landed in the record when naive did has landed here, and nothing after it
    order = [e["trial_id"] for e in tape.read(recorded / "runs" / "rec" / "tapes" / "trials.jsonl")]
    # (the replay's stop cancels what was still queued or running)
    landed = {tid for tid, row in rows.items() if row[1] not in ("queued", "cancelled")}
    assert landed == set(order[:order.index("base-naive") + 1]), rows
