"""The tape: what each researcher's brain was given and what it did, recorded for `aar replay`.

One JSONL file per researcher, `runs/<id>/tapes/<rid>.jsonl`, appended event by event (secrets
scrubbed) and continued by a restarted actor; and `trials.jsonl`, appended by the trial service when a
trial's outcome reaches the forum. Every line has `t` (seconds since the epoch) and `kind`:

  start     an actor (re)starts the loop: the `step` it restored, and what rebuilds its brain
            (`brain`: offline or claude; `direction`; `seed`)
  observe   step n's observation and the tool results handed to the brain with it (`handed`)
  reserve   (Claude) step n's call's worst-case cost, reserved with the budget authority before calling
  exchange  (Claude) step n's API call: its request and every attempt, in order: {"reply": Message},
            {"fault", "retry_after"} (retried) or {"refused"} (a refusal, not retried)
  act       the calls the brain returned for step n, and its spend after them
  result    one call of step n: `index`, the ToolResult; `t` is when it started executing
  saved     step n's results are persisted (a restart answers the calls with them)
  outcome   why the loop ended
  trial     (trials.jsonl) a trial's outcome reached the forum at `t`, the forum's own clock:
            `trial_id`, `owner`, `state` (TrialState) and `status` (TrialStatus)

Times order the researchers' and the trials' events into one sequence, so the clocks of the
processes writing them are assumed to agree (one host, or NTP-synced nodes).

Requests grow by a turn each step, so an exchange stores what changed since the tape's previous
request: its first `messages_kept` messages are the previous request's, `messages` holds the rest,
and the other fields (system prompt, tools, model) appear only when they changed (`dropped` lists
fields that went away). A restarted actor writes its first request whole. `read` makes them whole.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from aar_ray.agents.base import append_jsonl

TAPES = "tapes"  # the directory of a campaign's tapes
TRIALS_TAPE = "trials.jsonl"  # the trial service's tape (researcher ids are r0, r1, ...)


class Tape:
    """Appends events to one tape; with no `path` it records nothing."""

    def __init__(self, path: Path | None, scrub: Callable[[str], str] = str):
        self.path, self.scrub = path, scrub
        self._last_request: dict | None = None

    def add(self, kind: str, t: float | None = None, **data: Any) -> None:
        if self.path is not None:
            append_jsonl(self.path, {"t": time.time() if t is None else t, "kind": kind, **data}, self.scrub)

    def exchange(self, step: int, request: dict, attempts: list[dict]) -> None:
        """One API call (with its retries) of `step`; `request` as sent (JSON-serialisable)."""
        self.add("exchange", step=step, request=_delta(self._last_request, request), attempts=attempts)
        self._last_request = request


def _delta(prev: dict | None, request: dict) -> dict:
    if prev is None:
        return request
    msgs, old = request["messages"], prev["messages"]
    kept = 0
    while kept < min(len(msgs), len(old)) and msgs[kept] == old[kept]:
        kept += 1
    out = {k: v for k, v in request.items() if k != "messages" and prev.get(k) != v}
    dropped = [k for k in prev if k not in request]
    return {**out, **({"dropped": dropped} if dropped else {}), "messages_kept": kept, "messages": msgs[kept:]}


def _whole(prev: dict | None, stored: dict) -> dict:
    if "messages_kept" not in stored:
        return stored
    if prev is None:
        raise ValueError("a tape's exchange refers to a previous request the tape does not have")
    base = {k: v for k, v in prev.items() if k not in stored.get("dropped", [])}
    fields = {k: v for k, v in stored.items() if k not in ("dropped", "messages_kept", "messages")}
    return {**base, **fields, "messages": prev["messages"][:stored["messages_kept"]] + stored["messages"]}


def read(path: Path) -> list[dict]:
    """A tape's events, in the order written, each exchange's request whole (a last line cut short by a
    kill is dropped)."""
    events, prev = [], None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for n, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last write of a process killed mid-line: it never happened
                break
            raise ValueError(f"{path}: line {n} is not JSON (a write cut short, then appended to)") from None
        if event["kind"] == "exchange":
            event["request"] = prev = _whole(prev, event["request"])
        events.append(event)
    return events
