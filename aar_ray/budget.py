"""The campaign's one budget authority: LLM dollars and tokens (per researcher and campaign-wide) and
the research deadline.

Every Claude call first reserves its worst-case cost here (`reserve`), which refuses the call when
that cost would cross the researcher's remaining caps or the campaign's remaining dollars; the reply's
real cost then replaces the reservation (`settle`). An open reservation counts as spent, and the
check and the reservation are one step under a lock (one Ray actor in a campaign), so researchers
calling at once can never together pass a cap, and nobody polls. The driver's wind-down reads
`status()`.

A reply can still cost more than its reservation when the request was longer than its estimate
(characters / 4): it is recorded, and `settle` says which cap it spent, so its tool calls are not
executed.

The deadline is fixed the first time research starts (`deadline`) and kept across resumes. The state
is persisted (JSON beside the campaign) after every change, so a resumed campaign keeps its spend; a
reservation still open when the campaign died (a call in flight) is counted at its worst case, since
the API may have answered and billed it.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from pathlib import Path

from aar_ray.agents.base import BudgetExceeded
from aar_ray.config import ResearcherBudget

BUDGET = "aar-budget"  # the named actor of a campaign's namespace


class BudgetAuthority:
    """Spend per researcher against `researcher` caps and in all against `campaign_dollars`."""

    def __init__(self, researcher: ResearcherBudget, campaign_dollars: float = math.inf, path: str | None = None):
        self.caps = researcher
        self.campaign_dollars = campaign_dollars
        self.path = Path(path) if path else None
        self.spent: dict[str, dict[str, float]] = {}  # rid -> {"dollars", "tokens"}: settled costs
        self.open: dict[str, dict] = {}  # ticket -> {"rid", "dollars", "tokens"}: reserved, not yet settled
        self.deadline_at: float | None = None
        self.refused = ""  # why the campaign's cap refused a call (the campaign is then spent)
        self._lock = threading.Lock()
        self._load()

    # ---------- what researchers call ----------

    def reserve(self, rid: str, dollars: float, tokens: int, what: str = "") -> str:
        """A ticket for a call costing at most `dollars` and `tokens` (`what` says how that was
        estimated); raises BudgetExceeded, naming the cap, when it could cross one."""
        with self._lock:
            mine_d, mine_t = self._committed(rid)
            why = (_refusal("dollar budget", mine_d, dollars, self.caps.dollars, what)
                   or _refusal("token budget", mine_t, tokens, self.caps.tokens, what, unit="tokens"))
            if not why:
                total = sum(self._committed(r)[0] for r in self._rids())
                why = _refusal("the campaign's dollar budget", total, dollars, self.campaign_dollars, what)
                self.refused = why or self.refused
            if why:
                raise BudgetExceeded(why)
            ticket = uuid.uuid4().hex
            self.open[ticket] = {"rid": rid, "dollars": float(dollars), "tokens": int(tokens)}
            self._save()
            return ticket

    def settle(self, ticket: str, dollars: float, tokens: int) -> str:
        """Replace a reservation with the reply's real cost. Returns why a cap is now spent, or ''."""
        with self._lock:
            rid = self.open.pop(ticket)["rid"]
            mine = self.spent.setdefault(rid, {"dollars": 0.0, "tokens": 0})
            mine["dollars"] += float(dollars)
            mine["tokens"] += int(tokens)
            self._save()
            d, t = self._committed(rid)
            total = sum(self._committed(r)[0] for r in self._rids())
            return (_spent("dollar budget", d, self.caps.dollars) or _spent("token budget", t, self.caps.tokens, "tokens")
                    or _spent("the campaign's dollar budget", total, self.campaign_dollars))

    def release(self, ticket: str) -> None:
        """A call that got no reply costs nothing."""
        with self._lock:
            self.open.pop(ticket, None)
            self._save()

    # ---------- what the driver reads ----------

    def status(self) -> dict:
        """Settled spend in all and per researcher, and why the campaign's dollars are spent ('' if not)."""
        with self._lock:
            by = {r: {"dollars": v["dollars"], "tokens": v["tokens"]} for r, v in self.spent.items()}
            total = sum(self._committed(r)[0] for r in self._rids())
            exhausted = _spent("the campaign's dollar budget", total, self.campaign_dollars) or self.refused
            return {"dollars": sum(v["dollars"] for v in by.values()), "tokens": sum(v["tokens"] for v in by.values()),
                    "by_researcher": by, "exhausted": exhausted}

    def deadline(self, deadline_s: float) -> float:
        """The campaign's research deadline (time.time()): now + deadline_s the first time, then kept."""
        with self._lock:
            if self.deadline_at is None:
                self.deadline_at = time.time() + deadline_s
                self._save()
            return self.deadline_at

    # ---------- bookkeeping ----------

    def _rids(self) -> set[str]:
        return set(self.spent) | {o["rid"] for o in self.open.values()}

    def _committed(self, rid: str) -> tuple[float, int]:
        """Settled plus reserved spend of one researcher."""
        mine = self.spent.get(rid, {"dollars": 0.0, "tokens": 0})
        held = [o for o in self.open.values() if o["rid"] == rid]
        return mine["dollars"] + sum(o["dollars"] for o in held), int(mine["tokens"] + sum(o["tokens"] for o in held))

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"spent": self.spent, "open": self.open, "deadline_at": self.deadline_at,
                                   "refused": self.refused}))
        os.replace(tmp, self.path)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        self.spent, self.deadline_at, self.refused = data["spent"], data["deadline_at"], data["refused"]
        for o in data["open"].values():  # in flight when the campaign died: counted at its worst case
            mine = self.spent.setdefault(o["rid"], {"dollars": 0.0, "tokens": 0})
            mine["dollars"] += o["dollars"]
            mine["tokens"] += o["tokens"]
        self._save()


def _spent(name: str, used: float, cap: float, unit: str = "$") -> str:
    """Why a cap is spent, or ''."""
    if used < cap:
        return ""
    return f"{name} spent: {used} of {cap} tokens" if unit == "tokens" else f"{name} spent: ${used:.4f} of ${cap:.2f}"


def _refusal(name: str, used: float, cost: float, cap: float, what: str, unit: str = "$") -> str:
    """Why a call costing up to `cost` may not start, or ''."""
    if used >= cap:
        return _spent(name, used, cap, unit)
    if used + cost <= cap:
        return ""
    how = f" ({what})" if what else ""
    if unit == "tokens":
        return f"{name}: the next call may use up to {cost} tokens{how} and only {cap - used} of {cap} are left"
    return f"{name}: the next call may cost up to ${cost:.4f}{how} and only ${cap - used:.4f} of ${cap:.2f} is left"
