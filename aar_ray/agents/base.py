"""The brain interface and the researcher loop's typed outcomes.

A brain turns what the researcher observes (and the results of its last tool calls) into the next
tool calls. Both brains, Claude and offline, speak the same tools (`aar_ray.agents.tools`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class ToolCall:
    """One tool call a brain wants executed. `id` pairs it with its result (Messages API tool_use id)."""

    id: str
    name: str
    input: Any  # validated by the executor, not trusted: a brain may send anything


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call, fed back to the brain. `content` is JSON-serializable."""

    id: str
    name: str
    content: Any
    is_error: bool = False


@dataclass
class Spend:
    """What a researcher has used; the harness compares it with the budgets."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    dollars: float = 0.0
    api_calls: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


def call(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a method on a plain object or a Ray actor handle alike (keeps Ray at the edge). An actor's
    exception is re-raised as itself (its cause), so callers catch the types they know."""
    fn = getattr(obj, method)
    if hasattr(fn, "remote"):
        import ray

        try:
            return ray.get(fn.remote(*args, **kwargs))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, Exception):
                raise e.cause from None
            raise
    return fn(*args, **kwargs)


class Brain(Protocol):
    """Decides the next tool calls. Must be deterministic given its seed and inputs (offline) or
    driven only by the API's responses (Claude). Never raises on a bad tool result; raises
    `BudgetExceeded` when its own spend passes the cap and `BrainError` when it cannot go on.

    Optional (the researcher calls them when a brain has them): `listen(fn)`, where `fn(kind, **data)`
    receives events for the transcript (API calls, retries); `on_results(results)`, the results of the
    calls the last `act` returned, once executed; `close()`, when the loop ends."""

    spend: Spend

    def act(self, observation: str, results: list[ToolResult]) -> list[ToolCall]: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


# ---------- typed outcomes (style rule 2: no magic strings) ----------

class ResearchOutcome(Exception):
    """Why a researcher's loop ended."""

    kind = "ended"

    def __init__(self, message: str = ""):
        super().__init__(message or self.kind)


class Finished(ResearchOutcome):
    """The brain called `finish`."""

    kind = "finished"


class BudgetExceeded(ResearchOutcome):
    """A hard budget (trials, GPU-seconds, tokens, dollars) is spent; `kind` names which when known
    (dollar_budget, token_budget, trial_budget, gpu_budget)."""

    kind = "budget_exceeded"

    def __init__(self, message: str = "", kind: str | None = None):
        super().__init__(message)
        if kind:
            self.kind = kind


class CampaignStopped(ResearchOutcome):
    """The campaign wound down; `kind` says why (trial_budget, gpu_budget, dollar_budget, deadline)."""

    kind = "campaign_stopped"

    def __init__(self, kind: str, message: str = ""):
        super().__init__(message or kind)
        self.kind = kind


class DeadlineReached(ResearchOutcome):
    """The campaign's deadline passed."""

    kind = "deadline"


class StepLimit(ResearchOutcome):
    """The researcher used its maximum number of steps."""

    kind = "step_limit"


class BrainError(ResearchOutcome):
    """The brain cannot continue (e.g. the API refused a request)."""

    kind = "brain_error"


class APIUnavailable(BrainError):
    """The Messages API kept failing (overloaded, down, malformed replies) through every retry."""

    kind = "api_unavailable"

    def __init__(self, fault: str = "", retries: int = 0):
        super().__init__(f"Messages API failed after {retries} retries ({retries + 1} attempts); last fault: {fault}")
        self.fault, self.retries = fault, retries

    def __reduce__(self):
        return APIUnavailable, (self.fault, self.retries)


@dataclass
class Transcript:
    """Everything a researcher did. With a `path`, each event is appended to that JSONL file as it
    happens (secrets scrubbed), so a restarted researcher continues the same file and a killed one
    loses nothing; `events` holds this run segment's events."""

    researcher: str
    path: Any = None  # pathlib.Path of the JSONL file, or None (in memory only)
    events: list[dict] = field(default_factory=list)
    scrub: Callable[[str], str] = str

    def add(self, kind: str, **data: Any) -> None:
        import time

        event = {"t": time.time(), "kind": kind, **data}
        self.events.append(event)
        if self.path is not None:
            append_jsonl(self.path, event, self.scrub)


def append_jsonl(path: Any, event: dict, scrub: Callable[[str], str] = str) -> None:
    """Append one event as a JSON line (secrets scrubbed) to `path`, creating its directory: each line is
    written whole as it happens, so a killed process loses nothing written before."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(scrub(json.dumps(event, default=str)) + "\n")
