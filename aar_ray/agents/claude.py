"""ClaudeBrain: a researcher brain on the Anthropic Messages API with tool use.

One `act(observation, results)` is one API call:
1. the user turn answers every `tool_use` of the previous assistant turn with a `tool_result` (in
   order, first in the turn, as the API requires), then carries the observation text;
2. if the conversation is too long, old turns are condensed into a summary (below);
3. the call's worst-case cost is reserved with the budget authority (`aar_ray.budget`), which refuses
   it when it could cross the researcher's or the campaign's remaining cap;
4. the call is retried on 429, 5xx, 529 overloaded, connection errors (resets, truncated bodies),
   timeouts and malformed replies (a 200 whose body is not a whole Message); when retries run out the
   brain raises `APIUnavailable`, naming the last fault and the number of retries;
5. usage is priced, added to `spend` and settled with the authority; the assistant turn is appended
   and its `tool_use` blocks are returned as `ToolCall`s, unvalidated (the executor validates and
   answers errors).
A failed call leaves the conversation untouched, so `act` can be called again with the same inputs.

Budgets: the worst case of a call is its request's input tokens, estimated as characters / 4 (system
prompt and tools included; the scripted test server has no count_tokens endpoint, and counting would
be one more API call per step) at the dearest input rate (a prompt-cache write), plus `max_tokens` at
the output rate. A reply that still pushes spend over a cap (its request was longer than estimated)
is recorded (spend and conversation) and then `BudgetExceeded` is raised instead of returning its
tool calls: a reply is paid for whether or not it is acted on.

Every call is one trace of the tracer (`aar_ray.tracking.MlflowCallTracer` in a campaign), retries
are its events; `listen(fn)` hands the same events to the transcript, and each call's whole exchange
(the request as sent and every attempt's reply or fault) to the tape (`aar_ray.agents.tape`), from
which `aar replay` answers the same requests with the recorded replies (`client=`, no key needed).

Context management (deterministic, no extra API call, so it costs nothing and replays exactly):
when the conversation holds more than `max_context_turns` assistant turns, or its estimated size
(characters / 4, system prompt and tools included) exceeds `max_context_tokens`, the oldest turns
are dropped and each becomes one-line digests ("step 3: submit_method({...}) -> {...}") in a
running summary. The summary opens the first kept user turn, whose tool_results (their tool_use was
dropped) become plain text, so every remaining tool_result still follows its tool_use.

Caching: `cache_control` marks the last tool, the system prompt (the stable prefix) and the last
block of the newest user turn (so each call reads the previous call's prefix from the cache).

The API key comes from the caller (in a campaign: the vault, `aar_ray.vault`) or `ANTHROPIC_API_KEY`,
is handed to the client, and is never stored in `state()`, logged, traced or put into an error
message. `ANTHROPIC_BASE_URL` is honoured by the SDK.
"""
from __future__ import annotations

import copy
import email.utils
import json
import random
import time
from dataclasses import asdict
from typing import Any, Callable

import anthropic

from aar_ray import vault
from aar_ray.agents.base import APIUnavailable, BrainError, BudgetExceeded, Spend, ToolCall, ToolResult, call
from aar_ray.agents.tools import TOOLS
from aar_ray.budget import BudgetAuthority
from aar_ray.config import ClaudeConfig, ResearcherBudget
from aar_ray.tracking import TRACE_TRIALS, CallTrace, CallTracer

KEY_ENV = vault.ANTHROPIC_KEY
STATE_VERSION = 1
CUT_OFF = ("max_tokens", "model_context_window_exceeded")  # stop reasons that truncate a reply
SUMMARY_HEADER = "[Summary of your earlier steps; their full transcript is no longer shown]"
_EPHEMERAL = {"type": "ephemeral"}


def _digest(value: Any, n: int) -> str:
    """One line of at most n characters."""
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date), else None."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _malformed(reply: Any) -> str:
    """What makes a 200 reply unusable ('' if nothing): the SDK does not validate bodies."""
    if not isinstance(reply, anthropic.types.Message):
        return f"expected a Message, got {type(reply).__name__}"
    if not isinstance(reply.content, list) or reply.usage is None:
        return "the body has no content or no usage"
    for b in reply.content:
        if getattr(b, "type", None) is None:
            return "a content block has no type"
        if b.type == "tool_use" and not (isinstance(b.id, str) and isinstance(b.name, str)):
            return "a tool_use block has no id or name"
    return ""


class RetryableFault(Exception):
    """A fault worth another attempt, with the server's retry-after hint if it gave one. A `client=`
    (a replay's) raises it to reproduce a recorded fault."""

    def __init__(self, fault: str, retry_after: float | None = None):
        super().__init__(fault)
        self.fault, self.retry_after = fault, retry_after


class ClaudeBrain:
    """The Brain protocol (`aar_ray.agents.base`) on Claude. See the module docstring.

    `authority` holds the caps (a `BudgetAuthority` or its actor; default: a private one with
    `budget`'s caps and no campaign cap); `tracer` traces each call (default: none); `client` replaces
    the SDK's (anything with `messages.create(**kwargs)`, e.g. a replay's recorded API): then no key is
    needed."""

    def __init__(self, cfg: ClaudeConfig, system_prompt: str, seed: int = 0,
                 budget: ResearcherBudget = ResearcherBudget(), *, researcher: str = "researcher",
                 api_key: str | None = None, authority: Any = None, tracer: CallTracer | None = None,
                 client: Any = None):
        self._key = api_key or ("" if client is not None else vault.get(KEY_ENV))
        if not self._key and client is None:
            raise BrainError(f"{KEY_ENV} is not set")
        self.cfg, self.rid = cfg, researcher
        self.authority = authority if authority is not None else BudgetAuthority(budget)
        self.tracer = tracer or CallTracer()
        self.system_prompt = system_prompt
        self.price = cfg.prices[cfg.model]
        self.spend = Spend()
        self.messages: list[dict] = []
        self.summary = ""  # the running digest of condensed turns
        self.summarized_turns = 0  # assistant turns condensed so far
        self.retries: list[dict] = []  # every retry: {"attempt", "reason", "delay_s"}, for the transcript
        self.last_stop_reason: str | None = None
        self.last_trace_id: str | None = None
        self._note = ""  # told to the model in the next user turn (e.g. that its last reply was cut off)
        self._listeners: list[Callable[..., None]] = []
        self._rng = random.Random(seed)  # backoff jitter only
        self._tools = copy.deepcopy(TOOLS)
        self._tools[-1]["cache_control"] = _EPHEMERAL
        self._fixed_chars = len(system_prompt) + len(json.dumps(self._tools))
        # An explicit api_key stops the SDK from falling back to profiles or other credential sources.
        self._client = client or anthropic.Anthropic(api_key=self._key, max_retries=0, timeout=cfg.timeout_s)

    # ---------------- the Brain protocol ----------------

    def act(self, observation: str, results: list[ToolResult]) -> list[ToolCall]:
        messages = self.messages + [self._user_turn(observation, results)]
        summary, condensed = self.summary, self.summarized_turns
        if self._too_long(messages):
            messages, summary, condensed = self._condense(messages)
        reply, over = self._paid_call(messages)
        content, calls, dropped = self._read(reply)
        self.messages = messages + [{"role": "assistant", "content": content}]
        self.summary, self.summarized_turns = summary, condensed
        self.last_stop_reason = reply.stop_reason
        self._note = ""
        if reply.stop_reason in CUT_OFF:
            what = f" and its unfinished tool call(s) {', '.join(dropped)} were dropped, not executed" if dropped else ""
            self._note = (f"Note: your previous reply hit the output limit (stop_reason={reply.stop_reason}, "
                          f"max_tokens={self.cfg.max_tokens}) and was cut off{what}. Keep replies shorter.")
        if over:  # the cap is hard: the reply is paid for, its tool calls are not executed
            raise BudgetExceeded(over)
        return calls

    def listen(self, fn: Callable[..., None]) -> None:
        """`fn(kind, **data)` gets every reservation ("api_reserved"), API call ("api_call") and retry
        ("api_retry"), and each call's whole exchange ("api_exchange")."""
        self._listeners.append(fn)

    def on_results(self, results: list[ToolResult]) -> None:
        """Tag the last call's trace with the trials its submit_method calls created."""
        ids = [r.content["trial_id"] for r in results if r.name == "submit_method" and not r.is_error
               and isinstance(r.content, dict) and r.content.get("trial_id")]
        if ids:
            self.tracer.tag(self.last_trace_id, {TRACE_TRIALS: ",".join(ids)})

    def close(self) -> None:
        self.tracer.flush()

    def state(self) -> dict:
        """JSON-serializable; holds no credential."""
        return {
            "version": STATE_VERSION,
            "model": self.cfg.model,
            "messages": copy.deepcopy(self.messages),
            "summary": self.summary,
            "summarized_turns": self.summarized_turns,
            "note": self._note,
            "last_stop_reason": self.last_stop_reason,
            "spend": asdict(self.spend),
            "retries": copy.deepcopy(self.retries),
        }

    def restore(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise BrainError(f"cannot restore ClaudeBrain state version {state.get('version')!r}")
        self.messages = copy.deepcopy(state["messages"])
        self.summary = state["summary"]
        self.summarized_turns = state["summarized_turns"]
        self._note = state["note"]
        self.last_stop_reason = state.get("last_stop_reason")
        self.spend = Spend(**state["spend"])
        self.retries = copy.deepcopy(state["retries"])

    # ---------------- budgets and accounting ----------------

    def worst_case(self, messages: list[dict]) -> tuple[float, int, str]:
        """(dollars, tokens, how) the call with these messages can cost at most (see the module docstring)."""
        p = self.price
        inp, out = self.context_tokens(messages), self.cfg.max_tokens
        rate = max(p.input, p.cache_write)
        how = f"~{inp} input tokens at ${rate:g}/MTok + max_tokens {out} at ${p.output:g}/MTok"
        return (inp * rate + out * p.output) / 1e6, inp + out, how

    def _record(self, usage: Any) -> tuple[float, int, dict, dict]:
        """Price a reply's usage and add it to `spend`: (dollars, tokens, and MLflow's usage and cost dicts)."""
        inp = usage.input_tokens or 0
        out = usage.output_tokens or 0
        cw = usage.cache_creation_input_tokens or 0
        cr = usage.cache_read_input_tokens or 0
        p, s = self.price, self.spend
        s.input_tokens += inp
        s.output_tokens += out
        s.cache_write_tokens += cw
        s.cache_read_tokens += cr
        s.api_calls += 1
        dollars = (inp * p.input + out * p.output + cw * p.cache_write + cr * p.cache_read) / 1e6
        s.dollars += dollars
        tokens, out_cost = inp + out + cw + cr, out * p.output / 1e6
        return dollars, tokens, {"input_tokens": inp + cw + cr, "output_tokens": out, "total_tokens": tokens,
                                 "cache_read_input_tokens": cr, "cache_creation_input_tokens": cw}, \
            {"input_cost": dollars - out_cost, "output_cost": out_cost, "total_cost": dollars}

    def _emit(self, kind: str, **data: Any) -> None:
        for fn in self._listeners:
            fn(kind, **data)

    # ---------------- the conversation ----------------

    def _pending_tool_uses(self) -> list[dict]:
        if not self.messages or self.messages[-1]["role"] != "assistant":
            return []
        return [b for b in self.messages[-1]["content"] if b["type"] == "tool_use"]

    def _render(self, content: Any) -> str:
        s = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, default=str)
        n = self.cfg.max_result_chars
        return s if len(s) <= n else s[:n] + f"\n[... truncated {len(s) - n} characters]"

    def _user_turn(self, observation: str, results: list[ToolResult]) -> dict:
        by_id = {r.id: r for r in results}
        blocks: list[dict] = []
        for use in self._pending_tool_uses():  # every tool_use must be answered, in the next turn, first
            r = by_id.pop(use["id"], None)
            if r is None:
                blocks.append({"type": "tool_result", "tool_use_id": use["id"], "is_error": True,
                               "content": "not executed: the harness returned no result for this call"})
                continue
            block = {"type": "tool_result", "tool_use_id": use["id"], "content": self._render(r.content)}
            if r.is_error:
                block["is_error"] = True
            blocks.append(block)
        text = [self._note] if self._note else []
        for r in by_id.values():  # results answering no call of the last turn (should not happen)
            text.append(f"Result of {r.name} ({r.id}){' [error]' if r.is_error else ''}: {self._render(r.content)}")
        text.append(observation.strip() or "(no new observation)")
        blocks.append({"type": "text", "text": "\n\n".join(text)})
        return {"role": "user", "content": blocks}

    def context_tokens(self, messages: list[dict] | None = None) -> int:
        """Estimated context size in tokens (characters / 4), system prompt and tools included."""
        messages = self.messages if messages is None else messages
        return (self._fixed_chars + len(json.dumps(messages, ensure_ascii=False))) // 4

    def _too_long(self, messages: list[dict]) -> bool:
        turns = sum(m["role"] == "assistant" for m in messages)
        return turns > self.cfg.max_context_turns or self.context_tokens(messages) > self.cfg.max_context_tokens

    def _condense(self, messages: list[dict]) -> tuple[list[dict], str, int]:
        """Drop the oldest turns into the summary; keep `keep_recent_turns` (fewer if still too long)."""
        starts = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        best = (messages, self.summary, self.summarized_turns)
        for keep in range(min(self.cfg.keep_recent_turns, len(starts) - 1), -1, -1):
            cut = starts[len(starts) - keep] - 1 if keep else len(messages) - 1  # a user turn
            best = self._condensed(messages, cut)
            if not self._too_long(best[0]):
                break
        return best

    def _condensed(self, messages: list[dict], cut: int) -> tuple[list[dict], str, int]:
        names: dict[str, str] = {}  # tool_use id -> tool name
        calls: dict[str, str] = {}  # tool_use id -> "name(input digest)"
        lines: list[str] = []
        step = self.summarized_turns
        for m in messages[:cut]:
            if m["role"] == "assistant":
                step += 1
                parts = []
                for b in m["content"]:
                    if b["type"] == "text":
                        parts.append(f'said "{_digest(b["text"], 160)}"')
                    elif b["type"] == "tool_use":
                        names[b["id"]] = b["name"]
                        calls[b["id"]] = f"{b['name']}({_digest(b['input'], 160)})"
                        parts.append(calls[b["id"]])
                lines.append(f"step {step}: " + ("; ".join(parts) or "(no action)"))
                continue
            for b in m["content"]:
                if b["type"] == "tool_result":
                    err = "ERROR " if b.get("is_error") else ""
                    lines.append(f"  -> {names.get(b['tool_use_id'], '?')}: {err}{_digest(b['content'], 200)}")
                elif b["type"] == "text" and not b["text"].startswith(SUMMARY_HEADER):
                    lines.append(f"  observed: {_digest(b['text'], 200)}")
        summary = "\n".join(([self.summary] if self.summary else []) + lines)
        if len(summary) > self.cfg.summary_max_chars:
            kept = summary[-self.cfg.summary_max_chars:]
            summary = "(older steps omitted)\n" + kept[kept.find("\n") + 1:]

        # The first kept turn answered tool_uses that are now gone: its results become plain text.
        head = [{"type": "text", "text": f"{SUMMARY_HEADER}\n{summary}"}]
        for b in messages[cut]["content"]:
            if b["type"] == "tool_result":
                err = " [error]" if b.get("is_error") else ""
                call = calls.get(b["tool_use_id"], b["tool_use_id"])
                head.append({"type": "text", "text": f"Result of your call {call}{err}:\n{b['content']}"})
            elif not (b["type"] == "text" and b["text"].startswith(SUMMARY_HEADER)):
                head.append(b)
        kept = [{"role": "user", "content": head}] + messages[cut + 1:]
        return kept, summary, step

    # ---------------- the API call ----------------

    def _request(self, messages: list[dict]) -> dict:
        last = copy.deepcopy(messages[-1])
        last["content"][-1]["cache_control"] = _EPHEMERAL  # cache the whole prefix for the next call
        kwargs = {
            "model": self.cfg.model,
            "max_tokens": self.cfg.max_tokens,
            "system": [{"type": "text", "text": self.system_prompt, "cache_control": _EPHEMERAL}],
            "tools": self._tools,
            "messages": messages[:-1] + [last],
        }
        if self.cfg.temperature is not None:  # not a typed SDK argument any more (current models reject it)
            kwargs["extra_body"] = {"temperature": self.cfg.temperature}
        return kwargs

    def _backoff(self, attempt: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, self.cfg.retry_after_max_s)
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** attempt)
        return base * (0.5 + 0.5 * self._rng.random())

    def _paid_call(self, messages: list[dict]) -> tuple[Any, str]:
        """One call under a reservation of its worst-case cost, traced: (the reply, why a cap is now
        spent or ''). Raises BudgetExceeded before calling when the call could cross a cap."""
        dollars, tokens, how = self.worst_case(messages)
        ticket = call(self.authority, "reserve", self.rid, dollars, tokens, how)
        self._emit("api_reserved", dollars=dollars, tokens=tokens, how=how)  # a replay of a call cut short redoes it
        kwargs = self._request(messages)
        trace = self.tracer.start("messages.create", {k: kwargs[k] for k in ("model", "max_tokens", "system", "messages")},
                                  {"aar.call": str(self.spend.api_calls + 1)})
        attempts: list[dict] = []
        try:
            reply = self._create(kwargs, trace, attempts)
        except BaseException as e:  # no reply: nothing to pay; the conversation is untouched
            call(self.authority, "release", ticket)
            trace.end(error=self._scrub(str(e)))
            raise
        finally:  # the request as sent (the key is the client's, never in it) and what each attempt got
            self._emit("api_exchange", request=json.loads(json.dumps(kwargs, default=str)), attempts=attempts)
        cost, used, usage, costs = self._record(reply.usage)
        trace.end(outputs=reply.to_dict(mode="json", warnings=False), usage=usage, cost=costs)
        self.last_trace_id = trace.trace_id
        self._emit("api_call", call=self.spend.api_calls, trace_id=trace.trace_id, stop_reason=reply.stop_reason,
                   tokens=used, dollars=cost, worst_case_dollars=dollars)
        return reply, call(self.authority, "settle", ticket, cost, used)

    def _read(self, reply: Any) -> tuple[list[dict], list[ToolCall], list[str]]:
        """(the assistant turn's content as sent back, the tool calls to execute, names of dropped calls)."""
        cut = reply.stop_reason in CUT_OFF
        content: list[dict] = []
        calls: list[ToolCall] = []
        dropped: list[str] = []
        for block in reply.content:
            if block.type == "tool_use":
                if cut:  # its input may be truncated JSON: never execute half a call
                    dropped.append(block.name)
                    continue
                calls.append(ToolCall(id=block.id, name=block.name, input=block.input))
                # the API only accepts object inputs back; keep what was sent, visibly
                sent = block.input if isinstance(block.input, dict) else {"invalid_input": block.input}
                content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": sent})
            elif block.type == "text":
                if block.text.strip():  # the API rejects empty text blocks in requests
                    content.append(block.to_dict(mode="json", exclude_none=True))
            else:  # thinking blocks go back unchanged, signature included
                content.append(block.to_dict(mode="json", exclude_none=True))
        if not any(b["type"] in ("text", "tool_use") for b in content):
            content.append({"type": "text", "text": f"(no reply text; stop_reason={reply.stop_reason})"})
        return content, calls, dropped

    def _create(self, kwargs: dict, trace: CallTrace, attempts: list[dict]) -> Any:
        """The request, retried with backoff while the fault is retryable; APIUnavailable when retries run
        out. Each attempt's reply or fault is appended to `attempts`."""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                reply = self._attempt(kwargs)
                attempts.append({"reply": reply.to_dict(mode="json", warnings=False)})
                return reply
            except RetryableFault as r:
                fault, hint = self._scrub(r.fault), r.retry_after
                attempts.append({"fault": fault, "retry_after": hint})
            except BrainError as e:
                attempts.append({"refused": str(e)})
                raise
            if attempt == self.cfg.max_retries:
                raise APIUnavailable(fault, retries=attempt)
            retry = {"attempt": attempt + 1, "reason": fault, "delay_s": self._backoff(attempt, hint)}
            self.retries.append(retry)
            trace.event("retry", **retry)
            self._emit("api_retry", **retry)
            time.sleep(retry["delay_s"])
        raise AssertionError("unreachable")

    def _attempt(self, kwargs: dict) -> Any:
        """One request: its reply; `RetryableFault` for a fault worth retrying; BrainError for a refusal."""
        try:
            reply = self._client.messages.create(**kwargs)
        except anthropic.APIStatusError as e:
            fault = f"HTTP {e.status_code} {e.type or ''}: {e.api_message or ''}".strip()
            if (e.status_code in (408, 409, 429) or e.status_code >= 500) and \
                    e.response.headers.get("x-should-retry") != "false":
                raise RetryableFault(fault, _retry_after(e.response.headers)) from None
            raise BrainError(self._scrub(f"Messages API refused the request: {fault}")) from None
        except anthropic.APITimeoutError:
            raise RetryableFault(f"timeout after {self.cfg.timeout_s}s") from None
        except anthropic.APIConnectionError as e:  # refused, reset, or a body cut short
            cause = e.__cause__ or e
            raise RetryableFault(f"connection error: {type(cause).__name__}: {cause}") from None
        except (json.JSONDecodeError, anthropic.APIResponseValidationError) as e:  # a 200 whose body is not JSON
            raise RetryableFault(f"malformed reply: {type(e).__name__}: {e}") from None
        problem = _malformed(reply)
        if problem:
            raise RetryableFault(f"malformed reply: {problem}")
        return reply

    def _scrub(self, text: str) -> str:
        return vault.scrub(text.replace(self._key, "***") if self._key else text)
