"""A local HTTP server that speaks the Anthropic Messages API well enough for the real SDK.

It replays a script, one step per request to POST /v1/messages:
- `reply(content, ...)`: a 200 with a full Message body;
- `error(status, type, message, headers)`: an error status with the API's JSON error body;
- `hang(seconds, then)`: waits (longer than the client's timeout), then answers `then`;
- `raw(data, status)`: exactly these bytes as the body (e.g. invalid JSON on a 200);
- `truncated(step, keep)`: the step's body cut after `keep` bytes, its full length announced, then the
  connection closed (a body cut short in transit);
- `reset()`: the connection closed at once, with a TCP reset, and no response;
- a callable: called with the request body, it returns the step to answer (a step computed from
  what the client sent, or one that signals the test).
Like the real API it answers 401 without an `x-api-key` or `Authorization: Bearer` header, and 400
when the conversation breaks the tool_use/tool_result pairing rules (so a brain that sends an
invalid request fails loudly here too). Every request is recorded (`requests`) for assertions.
When the script runs out it answers 400, which a client does not retry.
"""
from __future__ import annotations

import itertools
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


def tool_use(name: str, input: Any, id: str | None = None) -> dict:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": input}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def usage(input_tokens: int = 10, output_tokens: int = 5, cache_write: int | None = 0,
          cache_read: int | None = 0) -> dict:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}


_default_usage = usage


def reply(content: list[dict], stop_reason: str | None = None, usage: dict | None = None,
          model: str = "claude-sonnet-5-5") -> dict:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    body = {"id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": usage or _default_usage()}
    return {"status": 200, "body": body, "headers": {}}


def error(status: int, type: str, message: str = "scripted error", headers: dict | None = None) -> dict:
    return {"status": status, "body": {"type": "error", "error": {"type": type, "message": message}},
            "headers": dict(headers or {})}


def hang(seconds: float, then: dict | None = None) -> dict:
    return {"delay": seconds, **(then or error(500, "api_error", "answered after a hang"))}


def raw(data: bytes, status: int = 200) -> dict:
    return {"status": status, "raw": data, "headers": {}}


def truncated(step: dict, keep: int) -> dict:
    return {**step, "truncate": keep}


def reset() -> dict:
    return {"reset": True}


def check_messages(body: dict) -> str | None:
    """The API's structural rules a brain can break; None if the request is valid."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: at least one message is required"
    if msgs[0].get("role") != "user":
        return "messages: the first message must use the user role"
    breakpoints = sum("cache_control" in b for b in body.get("system", []) if isinstance(b, dict))
    breakpoints += sum("cache_control" in t for t in body.get("tools", []))
    prev: dict | None = None
    for i, m in enumerate(msgs):
        if prev is not None and m["role"] == prev["role"]:
            return f"messages.{i}: roles must alternate between user and assistant"
        content = m["content"]
        if not isinstance(content, list) or not content:
            return f"messages.{i}: content must be a non-empty list"
        breakpoints += sum("cache_control" in b for b in content)
        for b in content:
            if b["type"] == "text" and not b["text"].strip():
                return f"messages.{i}: text content blocks must be non-empty"
            if b["type"] == "tool_use" and not isinstance(b.get("input"), dict):
                return f"messages.{i}: tool_use.input: Input should be a valid dictionary"
        uses = [b["id"] for b in prev["content"] if b["type"] == "tool_use"] if prev else []
        results = [b["tool_use_id"] for b in content if b["type"] == "tool_result"]
        if m["role"] == "user":
            if results != [b["tool_use_id"] for b in content[:len(results)] if b["type"] == "tool_result"]:
                return f"messages.{i}: tool_result blocks must come before any other content"
            if sorted(results) != sorted(uses):
                return (f"messages.{i}: tool_use ids {uses} must each have exactly one tool_result "
                        f"in the next message, got {results}")
        elif results:
            return f"messages.{i}: tool_result blocks are only allowed in user messages"
        prev = m
    if breakpoints > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}."
    return None


@dataclass
class MessagesAPIServer:
    """Start with `start()`, stop with `stop()`; `base_url` is what ANTHROPIC_BASE_URL should be."""

    script: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # {"path", "headers", "body", "at"}

    def start(self) -> "MessagesAPIServer":
        server = self
        self._lock = threading.Lock()
        self._closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                import time

                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append({"path": self.path, "headers": headers, "body": body, "at": time.monotonic()})
                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(error(404, "not_found_error", f"no route {self.path}"))
                auth = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
                if not auth:
                    return self._send(error(401, "authentication_error", "x-api-key header is required"))
                problem = check_messages(body) if isinstance(body, dict) else "body must be a JSON object"
                if problem:
                    return self._send(error(400, "invalid_request_error", problem))
                with server._lock:
                    step = server.script.pop(0) if server.script else None
                if callable(step):
                    step = step(body)
                if step is None:
                    return self._send(error(400, "invalid_request_error", "script exhausted: no response left"))
                if step.get("delay"):
                    server._closing.wait(step["delay"])
                self._send(step)

            def _send(self, step: dict) -> None:
                if step.get("reset"):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                data = step["raw"] if "raw" in step else json.dumps(step["body"]).encode()
                try:
                    self.send_response(step["status"])
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_{len(server.requests):04d}")
                    for k, v in step.get("headers", {}).items():
                        self.send_header(k, str(v))
                    self.end_headers()
                    if "truncate" in step:
                        self.wfile.write(data[:step["truncate"]])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError, OSError):  # the client timed out and left
                    pass

            def finish(self) -> None:  # the socket may be closed already (reset, truncate)
                try:
                    super().finish()
                except OSError:
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *steps: dict) -> None:
        with self._lock:
            self.script.extend(steps)

    @property
    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def stop(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
