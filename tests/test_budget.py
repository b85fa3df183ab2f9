"""The budget authority (LLM spend and the deadline) and the vault (secrets in memory): pure, no Ray."""
from __future__ import annotations

import json
import os
import time

import pytest

from aar_ray import tracking, vault
from aar_ray.agents.base import BudgetExceeded
from aar_ray.budget import BudgetAuthority
from aar_ray.config import ResearcherBudget


def test_open_reservations_count_so_concurrent_calls_cannot_pass_a_cap():
    a = BudgetAuthority(ResearcherBudget(dollars=1.0, tokens=10_000), campaign_dollars=1.0)
    t1 = a.reserve("r1", 0.6, 100)  # in flight, not yet settled
    with pytest.raises(BudgetExceeded, match=r"^the campaign's dollar budget: the next call may cost up to \$0.6000 "
                                             r"\(est\) and only \$0.4000 of \$1.00 is left$"):
        a.reserve("r2", 0.6, 100, "est")
    assert a.status()["exhausted"].startswith("the campaign's dollar budget: the next call")
    assert a.settle(t1, 0.1, 50) == ""  # the reply cost less than its worst case: the rest is free again
    assert a.status() == {"dollars": 0.1, "tokens": 50, "by_researcher": {"r1": {"dollars": 0.1, "tokens": 50}},
                          "exhausted": a.refused}
    a.release(a.reserve("r2", 0.6, 100))  # a call that got no reply costs nothing
    assert a.status()["dollars"] == 0.1


def test_researcher_caps_and_a_reply_that_crosses_one():
    a = BudgetAuthority(ResearcherBudget(dollars=1.0, tokens=1000))
    with pytest.raises(BudgetExceeded, match="^token budget: the next call may use up to 1001 tokens and only 1000"):
        a.reserve("r1", 0.01, 1001)
    t = a.reserve("r1", 0.5, 500)
    assert a.settle(t, 1.2, 400) == "dollar budget spent: $1.2000 of $1.00"  # longer than estimated: recorded
    with pytest.raises(BudgetExceeded, match=r"^dollar budget spent: \$1.2000 of \$1.00$"):
        a.reserve("r1", 0.0, 0)
    a.reserve("r2", 0.5, 500)  # another researcher's cap is its own (no campaign cap here)


def test_state_survives_a_restart_and_calls_in_flight_count_at_their_worst_case(tmp_path):
    path = tmp_path / "private" / "budget.json"
    a = BudgetAuthority(ResearcherBudget(), campaign_dollars=10.0, path=str(path))
    deadline = a.deadline(600)
    assert time.time() + 590 < deadline <= time.time() + 600
    a.settle(a.reserve("r1", 0.3, 300), 0.2, 200)
    a.reserve("r1", 0.5, 900)  # the campaign dies during this call
    b = BudgetAuthority(ResearcherBudget(), campaign_dollars=10.0, path=str(path))  # the resumed campaign
    assert b.deadline(600) == deadline  # a resume does not restart the clock
    assert b.status()["by_researcher"] == {"r1": {"dollars": 0.7, "tokens": 1100}}
    assert json.loads(path.read_text())["open"] == {}


def test_withheld_takes_secrets_out_of_the_environment_for_the_block(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-planted-0001")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-planted-0002")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    with vault.withheld() as found:
        assert found == {"ANTHROPIC_API_KEY": "sk-ant-planted-0001", "MLFLOW_TRACKING_PASSWORD": "pw-planted-0002"}
        assert "ANTHROPIC_API_KEY" not in os.environ and "MLFLOW_TRACKING_PASSWORD" not in os.environ
        assert os.environ["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"  # not a secret
        # still known to this process, so anything it records is scrubbed
        assert vault.scrub("key sk-ant-planted-0001 pw pw-planted-0002") == "key *** pw ***"
        assert tracking.redact({"msg": "sk-ant-planted-0001"}) == {"msg": "***"}
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-planted-0001"
    assert vault.get("ANTHROPIC_API_KEY") == "sk-ant-planted-0001"
