"""ClaudeBrain against a local Messages API server: the real anthropic SDK, no monkeypatched client.

The executor here is a tiny scripted stand-in for the researcher's: it validates with
`aar_ray.agents.tools.validate` and answers canned results.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aar_ray.agents.base import APIUnavailable, BrainError, BudgetExceeded, Spend, ToolCall, ToolResult
from aar_ray.agents.claude import SUMMARY_HEADER, ClaudeBrain
from aar_ray.config import ClaudeConfig, ModelPrice, ResearcherBudget
from aar_ray.agents.prompts import system_prompt
from aar_ray.agents.tools import TOOLS, validate
from aar_ray.config import ConfigError
from aar_ray.budget import BudgetAuthority
from tests.messages_api_server import (MessagesAPIServer, check_messages, error, hang, raw, reply, reset, text, tool_use,
                                       truncated, usage)

KEY = "sk-ant-api03-test-KEY-0123456789-never-leak"
EPH = {"type": "ephemeral"}
DIRECTION = "Teacher calibration: how much should the student trust each weak label?"


@pytest.fixture
def api(monkeypatch):
    server = MessagesAPIServer().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    yield server
    server.stop()


def config(**kw) -> ClaudeConfig:
    return ClaudeConfig(**{"timeout_s": 2.0, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.04, **kw})


def brain(cfg: ClaudeConfig | None = None, seed: int = 0, budget: ResearcherBudget = ResearcherBudget()) -> ClaudeBrain:
    return ClaudeBrain(cfg or config(), system_prompt(DIRECTION, researcher="r1", budgets={"trials": 12, "dollars": 5.0},
                                                      n_seeds=5), seed=seed, budget=budget)


class Executor:
    """Scripted stand-in for the researcher's tool executor."""

    def __init__(self):
        self.calls: list[ToolCall] = []

    def __call__(self, call: ToolCall) -> ToolResult:
        self.calls.append(call)
        problem = validate(call.name, call.input)
        if problem:
            return ToolResult(call.id, call.name, {"error": problem}, is_error=True)
        canned = {"submit_method": {"trial_id": "trial-1", "status": "queued"},
                  "get_results": {"trials": [{"trial_id": "trial-1", "status": "done", "val_pgr_mean": 0.42,
                                              "val_pgr_std": 0.05}]},
                  "post_finding": {"finding_id": "finding-1"},
                  "finish": {"finished": True}}
        return ToolResult(call.id, call.name, canned.get(call.name, {"ok": True}))


def user(*blocks: dict) -> dict:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict) -> dict:
    return {"role": "assistant", "content": list(blocks)}


def result(tid: str, content, is_error: bool = False) -> dict:
    b = {"type": "tool_result", "tool_use_id": tid, "content": json.dumps(content)}
    return {**b, "is_error": True} if is_error else b


def last(t: str) -> dict:
    return {"type": "text", "text": t, "cache_control": EPH}


def dollars(p: ModelPrice, inp: int, out: int, cw: int, cr: int) -> float:
    return (inp * p.input + out * p.output + cw * p.cache_write + cr * p.cache_read) / 1e6


COMPOSITION = {"name": "calibrated_conf", "rationale": "temper overconfident weak labels", "fidelity": "quick",
               "composition": {"loss": "confidence", "alpha": 0.5, "weighting": "confidence", "power": 1.0}}


def test_full_research_loop(api):
    api.add(reply([text("I'll start with the confidence loss."), tool_use("submit_method", COMPOSITION, id="toolu_a")],
                  usage=usage(1000, 200, cache_write=3000, cache_read=0)),
            reply([tool_use("get_results", {}, id="toolu_b")], usage=usage(50, 20, cache_write=0, cache_read=4000)),
            reply([tool_use("post_finding", {"text": "confidence weighting: val PGR 0.42", "trial_id": "trial-1"},
                            id="toolu_c")], usage=usage(60, 30, cache_write=100, cache_read=4000)),
            reply([tool_use("finish", {"summary": "weighting helps"}, id="toolu_d")], usage=usage(70, 10, None, None)))
    b, ex = brain(), Executor()
    obs, results = "Campaign started.", []
    for step in range(1, 10):
        calls = b.act(obs, results)
        results = [ex(c) for c in calls]
        if any(c.name == "finish" for c in calls):
            break
        obs = f"step {step}"

    assert step == 4
    assert [(c.id, c.name) for c in ex.calls] == [("toolu_a", "submit_method"), ("toolu_b", "get_results"),
                                                  ("toolu_c", "post_finding"), ("toolu_d", "finish")]
    assert all(not r.is_error for r in results)
    assert len(api.requests) == 4
    for r in api.requests:
        assert r["path"] == "/v1/messages"
        assert KEY in (r["headers"].get("x-api-key"), r["headers"].get("authorization", "").removeprefix("Bearer "))
        body = r["body"]
        assert check_messages(body) is None
        assert body["model"] == "claude-sonnet-5-5" and body["max_tokens"] == 16000
        assert "temperature" not in body
        assert [t["name"] for t in body["tools"]] == [t["name"] for t in TOOLS]
        assert [("cache_control" in t) for t in body["tools"]] == [False] * (len(TOOLS) - 1) + [True]
        assert body["tools"][-1]["cache_control"] == EPH
        assert body["system"] == [{"type": "text", "text": b.system_prompt, "cache_control": EPH}]

    a1 = assistant(text("I'll start with the confidence loss."), tool_use("submit_method", COMPOSITION, id="toolu_a"))
    assert api.bodies[0]["messages"] == [user(last("Campaign started."))]
    assert api.bodies[1]["messages"] == [
        user(text("Campaign started.")), a1,
        user(result("toolu_a", {"trial_id": "trial-1", "status": "queued"}), last("step 1"))]
    assert api.bodies[3]["messages"][-1] == user(result("toolu_c", {"finding_id": "finding-1"}), last("step 3"))
    assert b.messages[-1] == assistant(tool_use("finish", {"summary": "weighting helps"}, id="toolu_d"))
    assert len(b.messages) == 8 and b.last_stop_reason == "tool_use"

    p = ModelPrice(2.0, 10.0, 2.5, 0.2)
    assert b.spend == Spend(input_tokens=1180, output_tokens=260, cache_read_tokens=8000, cache_write_tokens=3100,
                            dollars=pytest.approx(dollars(p, 1000, 200, 3000, 0) + dollars(p, 50, 20, 0, 4000)
                                                  + dollars(p, 60, 30, 100, 4000) + dollars(p, 70, 10, 0, 0),
                                                  rel=1e-12, abs=0),
                            api_calls=4)
    assert b.spend.tokens == 12540
    assert b.retries == []


def test_system_prompt_states_problem_rules_direction_and_budgets(api):
    api.add(reply([text("ok")]))
    b = brain()
    b.act("hello", [])
    sent = api.bodies[0]["system"][0]["text"]
    for phrase in [DIRECTION, "You are researcher r1.", "PGR = (acc_method - acc_weak) / (acc_ceiling - acc_weak)",
                   "def run(ctx) -> torch.Tensor:", "ctx.weak_labels", "ctx.fit_probe(", "ctx.features(",
                   "aar_ray/w2s/api.py", "No cheating", "Do not skip the teacher", "Do not probe the scorer",
                   "test PGR and the held-out tasks are hidden", "The harness picks the seeds",
                   "- trials: 12\n- dollars: 5.0", "scored on 5 seeds"]:
        assert phrase in sent, phrase
    with pytest.raises(ValueError, match="direction"):
        system_prompt("  ")


def test_reply_without_tool_use_returns_no_calls(api):
    api.add(reply([text("Let me think about calibration first.")]), reply([tool_use("leaderboard", {}, id="toolu_l")]))
    b = brain()
    assert b.act("start", []) == []
    assert b.act("Please call a tool.", []) == [ToolCall("toolu_l", "leaderboard", {})]
    assert api.bodies[1]["messages"][1:] == [assistant(text("Let me think about calibration first.")),
                                             user(last("Please call a tool."))]


@pytest.mark.parametrize("header,expected", [("0.2", 0.2), ("30", 0.1)])
def test_429_honours_retry_after_capped(api, header, expected):
    api.add(error(429, "rate_limit_error", "slow down", headers={"retry-after": header}),
            reply([tool_use("leaderboard", {"limit": 5}, id="toolu_1")]))
    b = brain(config(retry_after_max_s=0.1 if expected == 0.1 else 120.0))
    assert b.act("start", []) == [ToolCall("toolu_1", "leaderboard", {"limit": 5})]
    assert b.retries == [{"attempt": 1, "reason": "HTTP 429 rate_limit_error: slow down", "delay_s": expected}]
    assert len(api.requests) == 2
    assert api.requests[1]["at"] - api.requests[0]["at"] >= expected
    assert api.bodies[0] == api.bodies[1]  # the retry resends the same request
    assert b.spend.api_calls == 1


def test_500_and_529_back_off_exponentially_with_seeded_jitter(api):
    api.add(error(500, "api_error", "boom"), error(529, "overloaded_error", "Overloaded"),
            reply([tool_use("read_forum", {}, id="toolu_1")]))
    b = brain(config(backoff_base_s=0.02, backoff_max_s=0.03), seed=7)
    assert b.act("start", []) == [ToolCall("toolu_1", "read_forum", {})]
    rng = random.Random(7)
    d1 = 0.02 * (0.5 + 0.5 * rng.random())
    d2 = 0.03 * (0.5 + 0.5 * rng.random())  # 0.04 capped at backoff_max_s
    assert b.retries == [{"attempt": 1, "reason": "HTTP 500 api_error: boom", "delay_s": d1},
                         {"attempt": 2, "reason": "HTTP 529 overloaded_error: Overloaded", "delay_s": d2}]
    assert len(api.requests) == 3


def test_sustained_overload_ends_with_the_fault_and_retry_count_and_leaves_conversation_untouched(api):
    api.add(*[error(529, "overloaded_error", "Overloaded")] * 3)
    b = brain(config(max_retries=2))
    with pytest.raises(APIUnavailable) as info:
        b.act("start", [])
    assert str(info.value) == ("Messages API failed after 2 retries (3 attempts); "
                               "last fault: HTTP 529 overloaded_error: Overloaded")
    assert info.value.kind == "api_unavailable" and isinstance(info.value, BrainError)
    assert (info.value.fault, info.value.retries) == ("HTTP 529 overloaded_error: Overloaded", 2)
    assert len(api.requests) == 3 and [r["attempt"] for r in b.retries] == [1, 2]
    assert b.messages == [] and b.spend == Spend()
    api.add(reply([tool_use("leaderboard", {}, id="toolu_1")]))  # the same act can simply be retried
    assert b.act("start", []) == [ToolCall("toolu_1", "leaderboard", {})]
    assert api.bodies[3]["messages"] == [user(last("start"))]


def test_client_error_is_not_retried(api):
    api.add(error(400, "invalid_request_error", "bad request"))
    b = brain()
    with pytest.raises(BrainError, match="refused the request: HTTP 400 invalid_request_error: bad request"):
        b.act("start", [])
    assert len(api.requests) == 1 and b.retries == []


def test_timeout_is_retried(api):
    api.add(hang(3.0), reply([tool_use("get_results", {}, id="toolu_1")]))
    b = brain(config(timeout_s=0.3))
    t0 = time.monotonic()
    assert b.act("start", []) == [ToolCall("toolu_1", "get_results", {})]
    assert time.monotonic() - t0 < 2.5  # did not wait for the hung response
    assert [(r["attempt"], r["reason"]) for r in b.retries] == [(1, "timeout after 0.3s")]
    assert len(api.requests) == 2


@pytest.mark.parametrize("broken,reason", [
    (raw(b'{"id": "msg_1", "type": "mess'), "malformed reply: JSONDecodeError: Unterminated string"),  # 200, bad JSON
    (raw(b"<html>502 Bad Gateway</html>"), "malformed reply: JSONDecodeError: Expecting value"),
    (raw(b"{}"), "malformed reply: the body has no content or no usage"),  # 200, JSON, not a Message
    (truncated(reply([text("cut short")]), 40), "connection error: RemoteProtocolError: peer closed connection"),
    (reset(), "connection error: ReadError: [Errno 104] Connection reset by peer"),
])
def test_broken_replies_and_connections_are_retried_like_5xx(api, broken, reason):
    api.add(broken, reply([tool_use("leaderboard", {}, id="toolu_1")]))
    b = brain(seed=3)
    events = []
    b.listen(lambda kind, **data: events.append((kind, data)))
    assert b.act("start", []) == [ToolCall("toolu_1", "leaderboard", {})]
    assert len(b.retries) == 1 and b.retries[0]["reason"].startswith(reason), b.retries
    jitter = random.Random(3).random()
    assert b.retries[0]["delay_s"] == 0.01 * (0.5 + 0.5 * jitter)  # the same backoff as a 5xx
    assert len(api.requests) == 2 and api.bodies[0] == api.bodies[1]
    assert b.spend.api_calls == 1 and len(b.messages) == 2
    assert [k for k, _ in events] == ["api_reserved", "api_retry", "api_exchange", "api_call"]
    assert events[1][1] == b.retries[0]
    exchange = events[2][1]  # what the tape keeps for a replay: the request as sent, each attempt's outcome
    assert exchange["request"] == api.bodies[0]
    assert exchange["attempts"][0] == {"fault": b.retries[0]["reason"], "retry_after": None}
    assert exchange["attempts"][1]["reply"]["content"] == [tool_use("leaderboard", {}, id="toolu_1")]


def test_malformed_tool_input_is_returned_and_its_error_sent_back(api):
    api.add(reply([tool_use("submit_method", "not an object", id="toolu_x"),
                   tool_use("post_finding", {"trial_id": "trial-1"}, id="toolu_y")]),
            reply([tool_use("finish", {}, id="toolu_z")]))
    b, ex = brain(), Executor()
    calls = b.act("start", [])
    assert calls == [ToolCall("toolu_x", "submit_method", "not an object"),
                     ToolCall("toolu_y", "post_finding", {"trial_id": "trial-1"})]
    results = [ex(c) for c in calls]
    assert [r.is_error for r in results] == [True, True]
    b.act("next", results)
    sent = api.bodies[1]["messages"]
    assert sent[1] == assistant(tool_use("submit_method", {"invalid_input": "not an object"}, id="toolu_x"),
                                tool_use("post_finding", {"trial_id": "trial-1"}, id="toolu_y"))
    assert sent[2] == user(
        result("toolu_x", {"error": "invalid input for submit_method at input: 'not an object' is not of type 'object'"},
               is_error=True),
        result("toolu_y", {"error": "invalid input for post_finding at input: 'text' is a required property"},
               is_error=True),
        last("next"))


def test_unknown_tool_is_returned_and_its_error_sent_back(api):
    api.add(reply([tool_use("delete_labels", {"all": True}, id="toolu_u")]), reply([text("sorry")]))
    b, ex = brain(), Executor()
    calls = b.act("start", [])
    assert calls == [ToolCall("toolu_u", "delete_labels", {"all": True})]
    b.act("next", [ex(c) for c in calls])
    names = ", ".join(sorted(t["name"] for t in TOOLS))
    assert api.bodies[1]["messages"][2] == user(
        result("toolu_u", {"error": f"unknown tool 'delete_labels'; the tools are {names}"}, is_error=True), last("next"))


def test_missing_results_are_answered_as_errors(api):
    api.add(reply([tool_use("leaderboard", {}, id="toolu_1"), tool_use("read_forum", {}, id="toolu_2")]),
            reply([text("ok")]))
    b = brain()
    b.act("start", [])
    b.act("next", [ToolResult("toolu_2", "read_forum", "no findings yet"),
                   ToolResult("toolu_9", "get_results", {"stale": True})])
    assert api.bodies[1]["messages"][2] == user(
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
         "content": "not executed: the harness returned no result for this call"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no findings yet"},
        last('Result of get_results (toolu_9): {"stale": true}\n\nnext'))


@pytest.mark.parametrize("kw,use,reason", [
    ({"dollars": 0.01}, usage(1000, 1000, 0, 0), r"dollar budget spent: \$0.0120 of \$0.01"),
    ({"tokens": 5000}, usage(4800, 50, 0, 300), "token budget spent: 5150 of 5000 tokens"),
])
def test_reply_past_the_cap_records_spend_then_stops(api, kw, use, reason):
    """The request was longer than its estimate: the reply crosses the cap, is paid for, and its
    tool calls are not returned for execution."""
    api.add(reply([tool_use("submit_method", COMPOSITION, id="toolu_1")], usage=use))
    b = brain(config(max_tokens=100), budget=ResearcherBudget(**kw))  # the researcher's caps are the brain's caps
    with pytest.raises(BudgetExceeded, match=reason):
        b.act("start", [])
    p = ModelPrice(2.0, 10.0, 2.5, 0.2)
    u = use
    assert b.spend == Spend(u["input_tokens"], u["output_tokens"], u["cache_read_input_tokens"],
                            u["cache_creation_input_tokens"],
                            dollars(p, u["input_tokens"], u["output_tokens"], 0, u["cache_read_input_tokens"]), 1)
    assert b.messages[-1] == assistant(tool_use("submit_method", COMPOSITION, id="toolu_1"))
    with pytest.raises(BudgetExceeded, match=reason):  # the hard stop: no further request
        b.act("next", [ToolResult("toolu_1", "submit_method", {"trial_id": "t"})])
    assert len(api.requests) == 1


def test_a_call_whose_worst_case_could_cross_the_cap_is_never_sent(api):
    b = brain(config(max_tokens=1000), budget=ResearcherBudget(dollars=0.01))
    first = [user(text("start"))]
    n = b.context_tokens(first)  # characters / 4, system prompt and tools included
    assert 1000 < n < 4000
    worst = (n * 2.5 + 1000 * 10.0) / 1e6  # input at the cache-write rate (the dearest), output at its rate
    assert b.worst_case(first) == (worst, n + 1000, f"~{n} input tokens at $2.5/MTok + max_tokens 1000 at $10/MTok")
    with pytest.raises(BudgetExceeded) as info:
        b.act("start", [])
    assert str(info.value) == (f"dollar budget: the next call may cost up to ${worst:.4f} (~{n} input tokens at "
                               f"$2.5/MTok + max_tokens 1000 at $10/MTok) and only $0.0100 of $0.01 is left")
    assert api.requests == [] and b.messages == [] and b.spend == Spend()


def test_the_campaign_cap_binds_all_researchers_through_one_authority(api):
    """Two researchers, one authority: the second is refused because of what the first spent."""
    cfg = config(max_tokens=100)
    probe = brain(cfg)
    worst = probe.worst_case([user(text("go"))])[0]
    authority = BudgetAuthority(ResearcherBudget(dollars=1.0), campaign_dollars=1.5 * worst)
    b1, b2 = (ClaudeBrain(cfg, probe.system_prompt, researcher=r, authority=authority) for r in ("r1", "r2"))
    api.add(reply([tool_use("leaderboard", {}, id="toolu_1")], usage=usage(3000, 50, 0, 0)))
    assert b1.act("go", []) == [ToolCall("toolu_1", "leaderboard", {})]
    spent = (3000 * 2.0 + 50 * 10.0) / 1e6
    with pytest.raises(BudgetExceeded, match=r"^the campaign's dollar budget: the next call may cost up to"):
        b2.act("go", [])
    assert len(api.requests) == 1
    status = authority.status()
    assert status["dollars"] == pytest.approx(spent) and status["by_researcher"] == {"r1": {"dollars": spent, "tokens": 3050}}
    assert status["exhausted"].startswith("the campaign's dollar budget: the next call may cost up to")


def test_spend_arithmetic_uses_the_configured_price_table(api):
    prices = {"claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
              "my-model": ModelPrice(input=3.0, output=7.0, cache_write=11.0, cache_read=0.5)}
    api.add(reply([text("a")], usage=usage(123, 45, 678, 9000)), reply([text("b")], usage=usage(7, 8, None, 1000)))
    b = brain(config(model="my-model", prices=prices))
    b.act("one", [])
    assert b.spend.dollars == (123 * 3.0 + 45 * 7.0 + 678 * 11.0 + 9000 * 0.5) / 1e6
    b.act("two", [])
    assert b.spend == Spend(130, 53, 10000, 678, (123 * 3.0 + 45 * 7.0 + 678 * 11.0 + 9000 * 0.5) / 1e6
                            + (7 * 3.0 + 8 * 7.0 + 1000 * 0.5) / 1e6, 2)
    assert api.bodies[0]["model"] == "my-model"


def test_max_tokens_stop_drops_the_partial_call_and_says_so(api):
    api.add(reply([text("Here is my method:"), tool_use("submit_method", {"name": "half", "rationale": "r"}, id="toolu_p")],
                  stop_reason="max_tokens"),
            reply([tool_use("submit_method", {"name": "whole"}, id="toolu_q")], stop_reason="max_tokens"),
            reply([text("shorter now")]))
    b = brain(config(max_tokens=64))
    assert b.act("start", []) == []
    assert b.messages[-1] == assistant(text("Here is my method:"))
    assert b.act("go on", []) == []
    assert b.messages[-1] == assistant(text("(no reply text; stop_reason=max_tokens)"))
    b.act("again", [])
    note = ("Note: your previous reply hit the output limit (stop_reason=max_tokens, max_tokens=64) and was cut off "
            "and its unfinished tool call(s) submit_method were dropped, not executed. Keep replies shorter.")
    assert api.bodies[1]["messages"][2] == user(last(f"{note}\n\ngo on"))
    assert api.bodies[2]["messages"][4] == user(last(f"{note}\n\nagain"))
    assert all(check_messages(body) is None for body in api.bodies)
    assert b.last_stop_reason == "end_turn" and b._note == ""


def test_thinking_blocks_are_sent_back_unchanged(api):
    thinking = {"type": "thinking", "thinking": "weighting by |2w-1| first", "signature": "sig-abc"}
    api.add(reply([thinking, tool_use("leaderboard", {}, id="toolu_1")]), reply([text("done")]))
    b = brain()
    b.act("start", [])
    b.act("next", [ToolResult("toolu_1", "leaderboard", [])])
    assert api.bodies[1]["messages"][1] == assistant(thinking, tool_use("leaderboard", {}, id="toolu_1"))


def test_state_restore_round_trip_continues_the_conversation(api, tmp_path):
    api.add(reply([tool_use("submit_method", COMPOSITION, id="toolu_1")], usage=usage(100, 10, 0, 0)),
            reply([tool_use("get_results", {}, id="toolu_2")], usage=usage(20, 10, 0, 100)),
            error(429, "rate_limit_error", headers={"retry-after": "0"}),
            reply([tool_use("finish", {"summary": "s"}, id="toolu_3")], usage=usage(30, 10, 0, 200)))
    ex = Executor()
    b1 = brain()
    calls = b1.act("start", [])
    calls = b1.act("next", [ex(c) for c in calls])
    saved = tmp_path / "brain.json"
    saved.write_text(json.dumps(b1.state()))
    pending = [ex(c) for c in calls]

    b2 = brain()  # a restarted actor
    b2.restore(json.loads(saved.read_text()))
    assert b2.state() == b1.state()
    assert b2.act("after restart", pending) == [ToolCall("toolu_3", "finish", {"summary": "s"})]
    assert api.bodies[3]["messages"][:-1] == [dict(m) for m in b1.messages]
    assert api.bodies[3]["messages"][-1] == user(
        result("toolu_2", {"trials": [{"trial_id": "trial-1", "status": "done", "val_pgr_mean": 0.42,
                                       "val_pgr_std": 0.05}]}), last("after restart"))
    assert b2.spend == Spend(150, 30, 300, 0, (150 * 2.0 + 30 * 10.0 + 300 * 0.2) / 1e6, 3)
    assert b2.state()["retries"] == [{"attempt": 1, "reason": "HTTP 429 rate_limit_error: scripted error", "delay_s": 0.0}]
    with pytest.raises(BrainError, match="version"):
        b2.restore({"version": 99})


def test_api_key_never_in_state_requests_bodies_or_files(api, tmp_path, monkeypatch):
    api.add(error(500, "api_error", f"echoing {KEY}"), reply([tool_use("leaderboard", {}, id="toolu_1")]),
            error(401, "authentication_error", f"invalid x-api-key {KEY}"))
    b = brain()
    b.act("start", [])
    with pytest.raises(BrainError) as info:
        b.act("next", [ToolResult("toolu_1", "leaderboard", [])])
    assert KEY not in str(info.value) and "***" in str(info.value)
    state = json.dumps(b.state())
    assert KEY not in state and "***" in state  # the echoed key in the retry reason is scrubbed
    (tmp_path / "state.json").write_text(state)
    assert all(KEY not in json.dumps(body) for body in api.bodies)
    assert all(KEY not in p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "api_key" not in state and KEY not in repr(vars(b).get("cfg"))


def test_missing_key_is_a_brain_error(api, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(BrainError, match="ANTHROPIC_API_KEY is not set"):
        brain()


def _get_results_script(n: int) -> list[dict]:
    return [reply([tool_use("get_results", {"trial_id": f"t{k}"}, id=f"toolu_{k}")]) for k in range(1, n + 1)]


def _results(calls: list[ToolCall]) -> list[ToolResult]:
    return [ToolResult(c.id, c.name, {"trial_id": c.input["trial_id"], "val_pgr": 0.5}) for c in calls]


def test_context_summarization_by_turns_keeps_requests_valid(api):
    api.add(*_get_results_script(8))
    b = brain(config(max_context_turns=3, keep_recent_turns=1))
    calls = b.act("start", [])
    for k in range(2, 9):
        calls = b.act(f"obs {k}", _results(calls))
    assert all(check_messages(body) is None for body in api.bodies)
    assert [len(body["messages"]) for body in api.bodies] == [1, 3, 5, 7, 3, 5, 7, 3]

    first = "\n".join([
        "  observed: start",
        'step 1: get_results({"trial_id": "t1"})',
        '  -> get_results: {"trial_id": "t1", "val_pgr": 0.5}',
        "  observed: obs 2",
        'step 2: get_results({"trial_id": "t2"})',
        '  -> get_results: {"trial_id": "t2", "val_pgr": 0.5}',
        "  observed: obs 3",
        'step 3: get_results({"trial_id": "t3"})'])
    assert api.bodies[4]["messages"] == [
        user(text(f"{SUMMARY_HEADER}\n{first}"),
             text('Result of your call get_results({"trial_id": "t3"}):\n{"trial_id": "t3", "val_pgr": 0.5}'),
             text("obs 4")),
        assistant(tool_use("get_results", {"trial_id": "t4"}, id="toolu_4")),
        user(result("toolu_4", {"trial_id": "t4", "val_pgr": 0.5}), last("obs 5"))]
    second = "\n".join([
        first,
        '  observed: Result of your call get_results({"trial_id": "t3"}): {"trial_id": "t3", "val_pgr": 0.5}',
        "  observed: obs 4",
        'step 4: get_results({"trial_id": "t4"})',
        '  -> get_results: {"trial_id": "t4", "val_pgr": 0.5}',
        "  observed: obs 5",
        'step 5: get_results({"trial_id": "t5"})',
        '  -> get_results: {"trial_id": "t5", "val_pgr": 0.5}',
        "  observed: obs 6",
        'step 6: get_results({"trial_id": "t6"})'])
    assert api.bodies[7]["messages"][0]["content"][0] == text(f"{SUMMARY_HEADER}\n{second}")
    assert b.summary == second and b.summarized_turns == 6
    assert b.state()["summary"] == second


def test_context_summarization_by_size_and_summary_cap(api):
    big = "x" * 4000
    api.add(*_get_results_script(3))
    fixed = brain().context_tokens()  # system prompt and tools
    b = brain(config(max_context_tokens=fixed + 1500, summary_max_chars=200))
    calls = b.act("start", [])
    calls = b.act("obs 2", [ToolResult(c.id, c.name, big) for c in calls])
    calls = b.act("obs 3", [ToolResult(c.id, c.name, big) for c in calls])
    assert all(check_messages(body) is None for body in api.bodies)
    assert [len(body["messages"]) for body in api.bodies] == [1, 3, 1]  # keep=1 still too big: all condensed
    assert b.context_tokens() < fixed + 1500
    summary = "\n".join(["(older steps omitted)",
                         "  observed: obs 2",
                         'step 2: get_results({"trial_id": "t2"})'])
    assert b.summary == summary and b.summarized_turns == 2
    assert api.bodies[2]["messages"] == [user(
        text(f"{SUMMARY_HEADER}\n{summary}"),
        text(f'Result of your call get_results({{"trial_id": "t2"}}):\n{big}'),
        last("obs 3"))]


def test_long_results_are_truncated(api):
    api.add(reply([tool_use("read_method", {"method_id": "m1"}, id="toolu_1")]), reply([text("ok")]))
    b = brain(config(max_result_chars=100))
    b.act("start", [])
    b.act("next", [ToolResult("toolu_1", "read_method", "y" * 250)])
    assert api.bodies[1]["messages"][2]["content"][0]["content"] == "y" * 100 + "\n[... truncated 150 characters]"


def test_config_validation_and_structured_loading():
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="claude.model: 'claude-x' has no entry in claude.prices"):
        ClaudeConfig(model="claude-x")
    with pytest.raises(ConfigError, match="claude.keep_recent_turns"):
        ClaudeConfig(max_context_turns=4, keep_recent_turns=4)
    with pytest.raises(ConfigError, match="prices.cache_read"):
        ModelPrice(1.0, 1.0, 1.0, -1.0)
    merged = OmegaConf.merge(OmegaConf.structured(ClaudeConfig),
                             OmegaConf.from_dotlist(["model=claude-haiku-4-5", "max_retries=2", "temperature=0.3"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, ClaudeConfig) and cfg.model == "claude-haiku-4-5" and cfg.max_retries == 2
    assert cfg.temperature == 0.3
    assert cfg.prices["claude-haiku-4-5"] == ModelPrice(1.0, 5.0, 1.25, 0.1)


def test_temperature_is_sent_when_set(api):
    api.add(reply([text("ok")]))
    brain(config(temperature=0.2)).act("start", [])
    assert api.bodies[0]["temperature"] == 0.2


@pytest.mark.slow  # a real MLflow store: ~10-20 s of import and schema creation on a 2-core box
def test_every_call_is_one_mlflow_trace_tagged_linked_with_retries_as_events(api, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from aar_ray import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AAR_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    try:
        tr = tracking.MlflowTracker()
        exp = tr.experiment("aar-campaign/c1")
        run = tr.start_run(exp, "researcher r1")
        tracer = tracking.MlflowCallTracer("aar-campaign/c1", {tracking.TRACE_CAMPAIGN: "c1",
                                                               tracking.TRACE_RESEARCHER: "r1"}, run_id=run)
        api.add(error(529, "overloaded_error", "Overloaded"),
                reply([tool_use("submit_method", COMPOSITION, id="toolu_1"), tool_use("leaderboard", {}, id="toolu_2")],
                      usage=usage(1000, 20)),
                reply([tool_use("read_forum", {}, id="toolu_3")]), error(400, "invalid_request_error", "no"))
        b = ClaudeBrain(config(), "You research W2S.", researcher="r1", tracer=tracer)
        calls = b.act("traced call", [])
        results = [ToolResult("toolu_1", "submit_method", {"trial_id": "t-abc", "status": "queued"}),
                   ToolResult("toolu_2", "leaderboard", {"leaderboard": []})]
        b.on_results(results)  # what the researcher does once the calls ran
        b.act("next", results)
        with pytest.raises(BrainError):
            b.act("again", [ToolResult("toolu_3", "read_forum", {"findings": []})])
        b.close()
        assert len(calls) == 2 and len(api.requests) == 4

        traces = sorted(mlflow.search_traces(locations=[exp], return_type="list"), key=lambda t: t.info.tags["aar.call"])
        assert len(traces) == 3  # one per call: the retried one, the next one, and the refused one
        first, second, refused = traces
        for t in traces:
            assert {k: t.info.tags.get(k) for k in (tracking.TRACE_CAMPAIGN, tracking.TRACE_RESEARCHER, tracking.TRACE_RUN)} \
                == {tracking.TRACE_CAMPAIGN: "c1", tracking.TRACE_RESEARCHER: "r1", tracking.TRACE_RUN: run}
            assert t.info.trace_metadata["mlflow.sourceRun"] == run  # the run's Traces tab lists it
        assert first.info.tags[tracking.TRACE_TRIALS] == "t-abc" and tracking.TRACE_TRIALS not in second.info.tags
        span = first.data.spans[0]
        assert [(e.name, e.attributes["attempt"], e.attributes["reason"]) for e in span.events] == [
            ("retry", 1, "HTTP 529 overloaded_error: Overloaded")]
        assert span.inputs["messages"][0]["content"][0]["text"] == "traced call"
        assert [b_["name"] for b_ in span.outputs["content"]] == ["submit_method", "leaderboard"]
        assert span.get_attribute("mlflow.llm.cost")["total_cost"] == pytest.approx((1000 * 2.0 + 20 * 10.0) / 1e6)
        assert second.data.spans[0].events == [] and str(refused.info.state) in ("ERROR", "TraceState.ERROR")
        assert len(mlflow.search_traces(locations=[exp], run_id=run, return_type="list")) == 3
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert {p.relative_to(tmp_path).parts[0] for p in written} == {"mlflow"}  # nothing beside the store
        assert all(KEY.encode() not in p.read_bytes() for p in written)
    finally:
        mlflow.set_tracking_uri(previous)


class _Scorer:
    """Stand-in for the scorer: these tools never reach it; the observation asks for the query count."""

    def queries_left(self, rid: str) -> int:
        return 3


def test_a_restarted_researcher_answers_the_calls_that_ran_with_their_real_results(api, tmp_path):
    from aar_ray.agents.researcher import Researcher, ToolExecutor
    from aar_ray.forum import Forum

    forum = Forum(tmp_path / "forum.db", n_seeds=2)
    forum.post_finding("r9", "naive is the floor to beat")
    budget = ResearcherBudget(idle_wait_s=0.0)
    api.add(reply([tool_use("read_forum", {}, id="toolu_1"), tool_use("post_finding", {"text": "calibrate"}, id="toolu_2")]),
            reply([tool_use("finish", {"summary": "done"}, id="toolu_3")]))

    def researcher() -> Researcher:  # a new actor process: everything it knows comes from the forum
        ex = ToolExecutor("r0", forum, _Scorer(), None, budget, None, None, [0, 1])
        return Researcher("r0", brain(), ex, budget, time.time() + 600, tmp_path / "transcripts")

    researcher().step()  # one reply, both of its calls executed and saved; then the actor dies
    out = researcher().run()
    assert out["outcome"] == "finished"
    sent = [b_ for b_ in api.bodies[1]["messages"][2]["content"] if b_["type"] == "tool_result"]
    assert [r["tool_use_id"] for r in sent] == ["toolu_1", "toolu_2"] and not any(r.get("is_error") for r in sent)
    assert "naive is the floor to beat" in sent[0]["content"] and json.loads(sent[1]["content"]) == {"finding_id": 2}
    # one transcript across the restart: appended, never overwritten
    events = [json.loads(line) for line in (tmp_path / "transcripts" / "r0.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["api_call", "tool", "tool", "restored", "api_call", "tool", "outcome"]
    assert events[3]["results"] == 2 and events[-1]["outcome"] == "finished"


def test_unknown_model_stops_the_campaign_with_a_config_error(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "AAR_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "aar_ray", "campaign", str(root / "experiments/quick.yaml"),
                           "brain=claude", "claude.model=nope"], capture_output=True, text=True, env=env, timeout=120)
    priced = ", ".join(sorted(ClaudeConfig().prices))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"aar: config error: claude.model: 'nope' has no entry in claude.prices (priced: {priced})"
    assert "claude-opus-4-6" in priced and not (tmp_path / "runs").exists()


def test_opus_4_6_is_priced():
    assert ClaudeConfig(model="claude-opus-4-6").prices["claude-opus-4-6"] == ModelPrice(5.0, 25.0, 6.25, 0.5)


def test_a_campaign_prompt_states_budgets_deadline_seeds_and_fidelity():
    import calendar

    from aar_ray.campaign.researchers import budget_lines
    from aar_ray.config import CampaignConfig, load_config

    cfg = load_config(CampaignConfig, None, ["scoring.query_budget=7", "researcher.dollars=2.5", "budget.dollars=20",
                                             "researcher.tokens=300000", "budget.deadline_s=3600", "budget.trials=30"])
    deadline = calendar.timegm((2030, 1, 2, 3, 4, 0))
    prompt = system_prompt("loss design", researcher="r2", budgets=budget_lines(cfg, deadline), n_seeds=3)
    for phrase in ["- scored queries: 7 (every submission that returns a score is one",
                   "- LLM dollars: $2.50 for you, $20.00 for all researchers together",
                   "- LLM tokens: 300,000", "- deadline: 2030-01-02 03:04 UTC (60 minutes of research",
                   "- campaign trials: 30", "Each trial is scored on 3 seeds chosen by the harness",
                   'Fidelity: "quick" trains with a quarter of the epochs', "Do not try to choose seeds"]:
        assert phrase in prompt, phrase
