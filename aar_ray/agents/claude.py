"""ClaudeBrain: a researcher brain on the Anthropic Messages API with tool use.

One `act(observation, results)` is one API call:
1. the user turn answers every `tool_use` of the previous assistant turn with a `tool_result` (in
   order, first in the turn, as the API requires), then carries the observation text;
2. if the conversation is too long, old turns are condensed into a summary (below);
3. the call is retried on 429, 5xx, 529 overloaded, connection errors and timeouts;
4. usage is priced and added to `spend`; the assistant turn is appended and its `tool_use` blocks
   are returned as `ToolCall`s, unvalidated (the executor validates and answers errors).
A failed call leaves the conversation untouched, so `act` can be called again with the same inputs.

Budgets: before a call, spend at or over `budget.dollars` / `budget.tokens` raises `BudgetExceeded`.
A reply that pushes spend over a cap is recorded (spend and conversation) and then `BudgetExceeded`
is raised instead of returning its tool calls: the cap is hard, and a reply is paid for whether or
not it is acted on.

Context management (deterministic, no extra API call, so it costs nothing and replays exactly):
when the conversation holds more than `max_context_turns` assistant turns, or its estimated size
(characters / 4, system prompt and tools included) exceeds `max_context_tokens`, the oldest turns
are dropped and each becomes one-line digests ("step 3: submit_method({...}) -> {...}") in a
running summary. The summary opens the first kept user turn, whose tool_results (their tool_use was
dropped) become plain text, so every remaining tool_result still follows its tool_use.

Caching: `cache_control` marks the last tool, the system prompt (the stable prefix) and the last
block of the newest user turn (so each call reads the previous call's prefix from the cache).

The API key is read from `ANTHROPIC_API_KEY` only, handed to the client, and never stored in
`state()`, logged or put into an error message. `ANTHROPIC_BASE_URL` is honoured by the SDK.
"""
from __future__ import annotations

import copy
import email.utils
import json
import os
import random
import time
from dataclasses import asdict
from typing import Any

import anthropic

from aar_ray.agents.base import BrainError, BudgetExceeded, Spend, ToolCall, ToolResult
from aar_ray.agents.tools import TOOLS
from aar_ray.config import ClaudeConfig, ResearcherBudget

KEY_ENV = "ANTHROPIC_API_KEY"
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


class ClaudeBrain:
    """The Brain protocol (`aar_ray.agents.base`) on Claude. See the module docstring."""

    def __init__(self, cfg: ClaudeConfig, system_prompt: str, seed: int = 0,
                 budget: ResearcherBudget = ResearcherBudget()):
        key = os.environ.get(KEY_ENV, "")
        if not key:
            raise BrainError(f"{KEY_ENV} is not set")
        self.cfg = cfg
        self.budget = budget  # its dollars and tokens are the caps (one of each, in the researcher's budget)
        self.system_prompt = system_prompt
        self.price = cfg.prices[cfg.model]
        self.spend = Spend()
        self.messages: list[dict] = []
        self.summary = ""  # the running digest of condensed turns
        self.summarized_turns = 0  # assistant turns condensed so far
        self.retries: list[dict] = []  # every retry: {"attempt", "reason", "delay_s"}, for the transcript
        self.last_stop_reason: str | None = None
        self._note = ""  # told to the model in the next user turn (e.g. that its last reply was cut off)
        self._rng = random.Random(seed)  # backoff jitter only
        self._tools = copy.deepcopy(TOOLS)
        self._tools[-1]["cache_control"] = _EPHEMERAL
        self._fixed_chars = len(system_prompt) + len(json.dumps(self._tools))
        if cfg.mlflow_autolog:  # before the client exists, so the patched `create` is the one it calls
            from aar_ray import tracking

            tracking.enable_anthropic_autolog(cfg.mlflow_experiment)
        # An explicit api_key stops the SDK from falling back to profiles or other credential sources.
        self._client = anthropic.Anthropic(api_key=key, max_retries=0, timeout=cfg.timeout_s)

    # ---------------- the Brain protocol ----------------

    def act(self, observation: str, results: list[ToolResult]) -> list[ToolCall]:
        self._check_budget()
        messages = self.messages + [self._user_turn(observation, results)]
        summary, condensed = self.summary, self.summarized_turns
        if self._too_long(messages):
            messages, summary, condensed = self._condense(messages)
        reply = self._create(messages)

        self._record(reply.usage)
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

        self.messages = messages + [{"role": "assistant", "content": content}]
        self.summary, self.summarized_turns = summary, condensed
        self.last_stop_reason = reply.stop_reason
        self._note = ""
        if cut:
            what = f" and its unfinished tool call(s) {', '.join(dropped)} were dropped, not executed" if dropped else ""
            self._note = (f"Note: your previous reply hit the output limit (stop_reason={reply.stop_reason}, "
                          f"max_tokens={self.cfg.max_tokens}) and was cut off{what}. Keep replies shorter.")
        over = self._over_budget()
        if over:
            raise BudgetExceeded(over)
        return calls

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

    def _over_budget(self) -> str:
        s, c = self.spend, self.budget
        if s.dollars >= c.dollars:
            return f"dollar budget spent: ${s.dollars:.4f} of ${c.dollars:.2f}"
        if s.tokens >= c.tokens:
            return f"token budget spent: {s.tokens} of {c.tokens} tokens"
        return ""

    def _check_budget(self) -> None:
        over = self._over_budget()
        if over:
            raise BudgetExceeded(over)

    def _record(self, usage: Any) -> None:
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
        s.dollars += (inp * p.input + out * p.output + cw * p.cache_write + cr * p.cache_read) / 1e6

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

    def _create(self, messages: list[dict]) -> Any:
        kwargs = self._request(messages)
        for attempt in range(self.cfg.max_retries + 1):
            hint = None
            try:
                return self._client.messages.create(**kwargs)
            except anthropic.APIStatusError as e:
                status = e.status_code
                retryable = (status in (408, 409, 429) or status >= 500) and \
                    e.response.headers.get("x-should-retry") != "false"
                reason = f"HTTP {status} {e.type or ''}: {e.api_message or ''}".strip()
                hint = _retry_after(e.response.headers)
                if not retryable:
                    raise BrainError(self._scrub(f"Messages API refused the request: {reason}")) from None
            except anthropic.APITimeoutError:
                reason = f"timeout after {self.cfg.timeout_s}s"
            except anthropic.APIConnectionError as e:
                reason = f"connection error: {e.__cause__ or e}"
            if attempt == self.cfg.max_retries:
                raise BrainError(self._scrub(f"Messages API failed after {attempt + 1} attempts; last: {reason}"))
            delay = self._backoff(attempt, hint)
            self.retries.append({"attempt": attempt + 1, "reason": self._scrub(reason), "delay_s": delay})
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _scrub(self, text: str) -> str:
        key = os.environ.get(KEY_ENV, "")
        return text.replace(key, "***") if key else text
