"""Replaying a researcher's brain from its tape (`aar_ray.agents.tape`): the brain-side half of `aar replay`.

`ReplayBrain` stands in for the recorded brain. Each `act` checks what it is handed against the
tape (the observation and the tool results, less wall-clock fields) and then hands the *recorded*
observation and results to `inner`, the same kind of brain rebuilt (offline: its direction and
seed; Claude: `RecordedAPI` instead of the API), so the brain sees exactly what it saw, down to the
seconds left; the calls it returns must equal the recorded ones. Without `inner` it returns the
recorded calls. `RecordedAPI` answers a Claude brain's requests with the recorded replies (and
faults, so the retries happen again), after checking that each request equals the recorded one.

A difference raises `Divergence`, which names where and shows expected against got.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable

from aar_ray.agents.base import BrainError, ResearchOutcome, Spend, ToolCall, ToolResult

# fields whose values depend only on wall time: the seconds left, the forum's timestamps, a tape's times
WALL_CLOCK = frozenset({"seconds_left", "created", "updated", "t"})


class Divergence(Exception):
    """The replay did not do what the record did: `where` (researcher, step, call or trial), `diff`
    (the first difference) and, when there is more to show, the whole `expected` and `got`."""

    def __init__(self, where: str, diff: str, expected: Any = None, got: Any = None):
        super().__init__(f"{where}: {diff}")
        self.where, self.diff, self.expected, self.got = where, diff, expected, got


class CutShort(Exception):
    """The record's actor died while its brain decided this step: the replay decides nothing either
    (the restarted actor decides the step again, as in the record). `reserve`: the budget reservation
    its API call had made, which the record's budget authority kept (at its worst case) and the
    replay's must too."""

    def __init__(self, where: str, reserve: dict | None = None):
        super().__init__(where)
        self.reserve = reserve


def _short(value: Any, n: int = 160) -> str:
    s = json.dumps(value, default=str, sort_keys=True)
    return s if len(s) <= n else s[: n - 1] + "…"


def _numbers(a: Any, b: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))


def difference(expected: Any, got: Any, tol: float = 0.0, path: str = "", ignore: frozenset = WALL_CLOCK) -> str | None:
    """Where `got` first differs from `expected` ("path: expected X, got Y"), or None. Dict keys in
    `ignore` are skipped; numbers match within `tol` (NaN matches NaN); both sides compare as JSON."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for k in list(expected) + [k for k in got if k not in expected]:
            if k in ignore:
                continue
            if k not in got or k not in expected:
                return f"{path}.{k}: expected {_short(expected.get(k)) if k in expected else '(absent)'}, " \
                       f"got {_short(got[k]) if k in got else '(absent)'}"
            found = difference(expected[k], got[k], tol, f"{path}.{k}", ignore)
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        for i, (e, g) in enumerate(zip(expected, got)):
            found = difference(e, g, tol, f"{path}[{i}]", ignore)
            if found:
                return found
        if len(expected) != len(got):
            return f"{path or '.'}: expected {len(expected)} items, got {len(got)}"
        return None
    if _numbers(expected, got):
        if expected == got or math.isclose(expected, got, rel_tol=0.0, abs_tol=tol) or \
                (math.isnan(expected) and math.isnan(got)):
            return None
    elif expected == got:
        return None
    return f"{path or '.'}: expected {_short(expected)}, got {_short(got)}"


def as_json(value: Any) -> Any:
    """`value` as it reads back from a tape (tuples become lists, dataclasses dicts)."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class Step:
    """One recorded step of a brain: what it was handed (`observe` event) and what it returned (`act`
    event; None when the brain ended the loop there instead, or the actor died while it decided)."""

    observe: dict
    act: dict | None = None
    outcome: dict | None = None  # the recorded outcome when the brain ended the loop at this step
    reserve: dict | None = None  # the budget reservation the brain made for this step's API call


class RecordedOutcome(ResearchOutcome):
    """A recorded outcome, replayed as it was (its `kind` is the recorded one)."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(message or kind)
        self.kind = kind


class ReplayBrain:
    """The Brain protocol, from a tape (see the module docstring). `steps` is shared by every
    ReplayBrain of one researcher: a rebuilt one (the record's actor restarted) continues it."""

    def __init__(self, rid: str, steps: deque, inner: Any = None):
        self.rid, self.steps, self.inner = rid, steps, inner
        self._spend = Spend()

    @property
    def spend(self) -> Spend:
        return self.inner.spend if self.inner is not None else self._spend

    def act(self, observation: str, results: list[ToolResult]) -> list[ToolCall]:
        rec, where = self._check(observation, results)
        if rec.act is None and rec.outcome is None:
            raise CutShort(where, rec.reserve)
        calls = self._decide(rec, where)
        if rec.act is not None:
            found = difference(rec.act["calls"], as_json([asdict(c) for c in calls]))
            if found:
                raise Divergence(f"{where}, the brain's calls", found)
            if self.inner is None:
                self._spend = Spend(**rec.act["spend"])
        return calls

    def _check(self, observation: str, results: list[ToolResult]) -> tuple[Step, str]:
        """The next recorded step, once what the brain is handed matches it."""
        if not self.steps:
            raise Divergence(f"{self.rid}: a step past the record", "the record has no more steps for this researcher")
        rec: Step = self.steps.popleft()
        where = f"{self.rid} step {rec.observe['step']}"
        found = difference(json.loads(rec.observe["observation"]), json.loads(observation))
        if found:
            raise Divergence(f"{where}, observation", found)
        found = difference(rec.observe["handed"], as_json([asdict(r) for r in results]))
        if found:
            raise Divergence(f"{where}, tool results handed to the brain", found)
        return rec, where

    def _decide(self, rec: Step, where: str) -> list[ToolCall]:
        """The inner brain's calls on the recorded inputs; the recorded ones without an inner brain."""
        if self.inner is None:
            if rec.act is None:
                raise RecordedOutcome(rec.outcome["outcome"], rec.outcome["message"])
            return [ToolCall(**c) for c in rec.act["calls"]]
        handed = [ToolResult(**r) for r in rec.observe["handed"]]
        try:
            calls = self.inner.act(rec.observe["observation"], handed)
        except ResearchOutcome as o:
            if rec.act is not None:
                raise Divergence(f"{where}, the brain", f"expected calls {_short(rec.act['calls'])}, "
                                                        f"got the outcome {o.kind}: {o}") from None
            raise
        if rec.act is None:
            raise Divergence(f"{where}, the brain", f"expected the outcome {rec.outcome['outcome']}, "
                                                    f"got calls {_short(as_json([asdict(c) for c in calls]))}")
        return calls

    def state(self) -> dict:
        return {"inner": self.inner.state() if self.inner is not None else None, "spend": asdict(self._spend)}

    def restore(self, state: dict) -> None:
        if self.inner is not None:
            self.inner.restore(state["inner"])
        self._spend = Spend(**state["spend"])

    def listen(self, fn: Callable[..., None]) -> None:
        self._inner_hook("listen", fn)

    def on_results(self, results: list[ToolResult]) -> None:
        self._inner_hook("on_results", results)

    def close(self) -> None:
        self._inner_hook("close")

    def _inner_hook(self, name: str, *args: Any) -> None:
        fn = getattr(self.inner, name, None)
        if fn is not None:
            fn(*args)


class RecordedAPI:
    """A stand-in for the Anthropic client (`client.messages.create(**kwargs)`) that answers from a
    tape's exchanges, in order: each request must equal the recorded one exactly; each attempt gives
    its recorded reply, or raises its recorded fault (retried by the brain as before) or refusal."""

    def __init__(self, rid: str, exchanges: list[dict]):
        self.rid = rid
        self.messages = self  # the SDK's shape: client.messages.create
        self._attempts = deque((ex["step"], ex["request"], a) for ex in exchanges for a in ex["attempts"])

    def create(self, **kwargs: Any) -> Any:
        import anthropic

        from aar_ray.agents.claude import RetryableFault

        if not self._attempts:
            raise Divergence(f"{self.rid}: an API call past the record", "the record has no more API calls")
        step, request, attempt = self._attempts.popleft()
        found = difference(request, as_json(kwargs), ignore=frozenset())
        if found:
            raise Divergence(f"{self.rid} step {step}, the API request", found)
        if "reply" in attempt:
            return anthropic.types.Message.model_validate(attempt["reply"])
        if "fault" in attempt:
            raise RetryableFault(attempt["fault"], attempt["retry_after"])
        raise BrainError(attempt["refused"])

    @property
    def left(self) -> int:
        """Recorded attempts not yet replayed."""
        return len(self._attempts)
