"""A fake LLM API server on 127.0.0.1 speaking OpenAI's and Anthropic's wire formats.

Used by the tests of rung-openai, rung-anthropic and rung-prompt, and by
`benchmarks/api_overhead.py`. It is a real HTTP/1.1 server (stdlib `http.server`, one thread
per connection) so the official SDKs run their whole path against it: request building,
retries, JSON and server-sent-event parsing, usage, errors.

Endpoints:
  POST /v1/chat/completions        OpenAI chat completions (JSON, or SSE with a usage chunk)
  POST /v1/messages                Anthropic Messages (JSON, or SSE events)
  POST /v1/messages/count_tokens   Anthropic token counting

Replies are deterministic: ``"echo: " + last user text``, one token per whitespace-separated
word, cut at a stop sequence or at max tokens. ``server.reply(text)`` queues a fixed reply.
Faults are queued with ``server.fault(name, ...)``, each used by one request:

  429        rate limited, with ``retry-after-ms: 10``
  500        internal server error (also with ``retry-after-ms: 10``, to keep tests fast)
  stall      accept the request, answer nothing for ``stall_s`` seconds, then close
  cut        stream half the reply and drop the connection mid-body (chunked, unterminated)
  cut_clean  stream half the reply, then end the body cleanly without finishing
  malformed  200 with a body that is not JSON
  error_event  (Anthropic streams) half the reply, then an ``error`` event (overloaded)
  refusal    the model refuses (OpenAI: message.refusal; Anthropic: stop_reason "refusal")

Tool calls: ``server.ask_tool(name, arguments)`` queues a reply that asks for one tool call
(``server.ask_tools((name, arguments), ...)``: several calls in one reply), used by the next
request that offers tools (OpenAI: ``message.tool_calls``, finish "tool_calls"; Anthropic:
a ``tool_use`` block, stop_reason "tool_use"; non-streamed). A request whose last turn
carries tool results (OpenAI: ``tool`` messages; Anthropic: ``tool_result`` blocks) is
answered ``"tool said: " + the results joined by "; "`` (a queued fixed reply still wins).

Requests with a wrong key get 401 (the message echoes the key, as some real APIs echo part
of it, so tests check rung never repeats it), an unknown model 404, and a prompt longer than
``context_words`` words 400 "context too long". Every request is recorded in
``server.requests``. The server is bounded: it refuses to serve more than ``max_requests``.

Run ``python tests/fake_llm_server.py`` to serve on an ephemeral port; it prints the port.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEST_KEY = "sk-test-S3CRET-key-0123456789"
KNOWN_MODELS = {"gpt-4o-mini", "gpt-test", "claude-test", "claude-haiku-4-5"}


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    status: int = 0
    fault: str | None = None


@dataclass
class _State:
    api_key: str = "sk-test-key"
    context_words: int = 200
    stall_s: float = 2.0
    max_requests: int = 10_000
    chunk_delay_s: float = 0.0
    response_delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: deque = field(default_factory=deque)
    replies: deque = field(default_factory=deque)
    tool_asks: deque = field(default_factory=deque)
    tool_call_count: int = 0
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeLLMServer:
    """Start with `start()` (or as a context manager); `url` is ``http://127.0.0.1:PORT``."""

    def __init__(self, api_key: str = "sk-test-key", record: bool = True) -> None:
        self.state = _State(api_key=api_key)
        self.record = record
        state, rec = self.state, record

        class Handler(_Handler):
            pass

        Handler.state = state
        Handler.record = rec
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting
    def fault(self, *names: str) -> None:
        """Queue faults; each is used by the next request that arrives."""
        self.state.faults.extend(names)

    def reply(self, *texts: str) -> None:
        """Queue fixed reply texts (instead of the echo)."""
        self.state.replies.extend(texts)

    def ask_tool(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        """Queue a reply asking for one call of tool `name` with `arguments`."""
        self.ask_tools((name, arguments or {}))

    def ask_tools(self, *calls: tuple[str, dict[str, Any]]) -> None:
        """Queue one reply asking for several tool calls, each (name, arguments)."""
        self.state.tool_asks.append([(name, dict(arguments)) for name, arguments in calls])

    def reset(self) -> None:
        with self.state.lock:
            self.state.faults.clear()
            self.state.replies.clear()
            self.state.tool_asks.clear()
            self.state.requests.clear()
            self.state.max_in_flight = 0
            defaults = _State()
            for name in ("context_words", "stall_s", "chunk_delay_s", "response_delay_s", "max_requests"):
                setattr(self.state, name, getattr(defaults, name))

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    def __getattr__(self, name: str) -> Any:  # api_key, context_words, stall_s, ...
        if name in _State.__dataclass_fields__:
            return getattr(self.state, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _State.__dataclass_fields__ and "state" in self.__dict__:
            setattr(self.state, name, value)
        else:
            super().__setattr__(name, value)


# ------------------------------------------------------------------------------ handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            super().handle_error(request, client_address)  # a bug in the fake server: show it


def _instance(schema: dict, text: str, defs: dict | None = None) -> Any:
    """A value that fits a JSON schema (strings are `text`): the model's structured reply."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].split("/")[-1]], text, defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _instance(schema[key][0], text, defs)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {name: _instance(sub, text, defs) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [_instance(schema.get("items", {}), text, defs)]
    return {"integer": len(text.split()), "number": 1.5, "boolean": True, "null": None}.get(kind, text)


def _words(text: str) -> list[str]:
    return text.split()


def _text_of(content: Any) -> str:
    """Message content as text: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State
    record: bool
    tool_ask: list | None = None  # the tool calls this request's reply asks for (`ask_tool`)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Send each small SSE chunk at once, as real servers do (no Nagle + delayed-ACK stalls).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection at once, mid-body."""
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _call_id(self, prefix: str) -> str:
        with self.state.lock:
            self.state.tool_call_count += 1
            return f"{prefix}_{self.state.tool_call_count}"

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(
                200, {"object": "list", "data": [{"id": m, "object": "model"} for m in sorted(KNOWN_MODELS)]}
            )
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        state = self.state
        with state.lock:
            too_many = len(state.requests) >= state.max_requests
            fault = state.faults.popleft() if state.faults else None
            self.tool_ask = (state.tool_asks.popleft() if state.tool_asks and fault is None and body.get("tools")
                             else None)
            fixed = state.replies.popleft() if state.replies and fault is None and self.tool_ask is None else None
            rec = Recorded(
                self.path,
                body,
                {k.lower(): v for k, v in self.headers.items() if k.lower() not in ("authorization", "x-api-key")},
                fault=fault,
            )
            if self.record or too_many:
                state.requests.append(rec)
        if too_many:
            rec.status = 503
            self._send_json(503, {"error": {"message": "fake server request limit reached", "type": "server_error"}})
            return
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.response_delay_s:
                time.sleep(state.response_delay_s)
            self._route(body, fault, fixed, rec)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _route(self, body: dict, fault: str | None, fixed: str | None, rec: Recorded) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/chat/completions":
            self._openai(body, fault, fixed, rec)
        elif path == "/v1/messages":
            self._anthropic(body, fault, fixed, rec)
        elif path == "/v1/messages/count_tokens":
            if not self._anthropic_auth_ok(rec):
                return
            words = sum(len(_words(_text_of(m.get("content")))) for m in body.get("messages", []))
            words += len(_words(_text_of(body.get("system", ""))))
            rec.status = 200
            self._send_json(200, {"input_tokens": words})
        else:
            rec.status = 404
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    # -- shared fault handling; returns True when the fault answered the request
    def _common_fault(self, fault: str | None, rec: Recorded, error: Any) -> bool:
        if fault == "429":
            rec.status = 429
            self._send_json(
                429,
                error("rate_limit_exceeded", "Rate limit reached, slow down"),
                {"retry-after-ms": "10", "retry-after": "0"},
            )
            return True
        if fault == "500":
            rec.status = 500
            self._send_json(500, error("server_error", "The server had an error"), {"retry-after-ms": "10"})
            return True
        if fault == "stall":
            rec.status = -1
            time.sleep(self.state.stall_s)
            self._drop()
            return True
        if fault == "malformed":
            rec.status = 200
            body = b'{"id": "x", "choices": [ this is not json'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        return False

    @staticmethod
    def _generate(text_in: str, fixed: str | None, max_tokens: int | None, stop: list[str]) -> tuple[list[str], str]:
        """The reply as a list of token strings and the finish reason ("stop" or "length")."""
        text = fixed if fixed is not None else "echo: " + text_in
        finish = "stop"
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        tokens = [w + " " for w in text.split(" ")]
        tokens[-1] = tokens[-1][:-1]
        tokens = [t for t in tokens if t]
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        return tokens, finish

    # -- OpenAI
    def _openai(self, body: dict, fault: str | None, fixed: str | None, rec: Recorded) -> None:
        def error(code: str, message: str, type_: str = "invalid_request_error") -> dict:
            return {"error": {"message": message, "type": type_, "param": None, "code": code}}

        auth = self.headers.get("authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else auth
        if key != self.state.api_key:
            rec.status = 401
            self._send_json(401, error("invalid_api_key", f"Incorrect API key provided: {key}. You can find your API "
                                                          "key at https://example.invalid."))
            return
        if self._common_fault(fault, rec, lambda c, m: error(c, m, "server_error")):
            return
        model = body.get("model")
        if model not in KNOWN_MODELS:
            rec.status = 404
            self._send_json(404, error("model_not_found", f"The model `{model}` does not exist or you do not have "
                                                          "access to it."))
            return
        messages = body.get("messages", [])
        prompt_tokens = sum(len(_words(_text_of(m.get("content")))) for m in messages)
        if prompt_tokens > self.state.context_words:
            rec.status = 400
            self._send_json(400, error("context_length_exceeded", "This model's maximum context length is "
                                                                  f"{self.state.context_words} tokens. However, your "
                                                                  f"messages resulted in {prompt_tokens} tokens. "
                                                                  "Please reduce the length of the messages."))
            return
        last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        results = []
        for m in reversed(messages):  # the tool results that end the conversation
            if m.get("role") != "tool":
                break
            results.insert(0, _text_of(m.get("content")))
        if results and fixed is None:
            fixed = "tool said: " + "; ".join(results)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema" and fixed is None:
            fixed = json.dumps(_instance(response_format["json_schema"]["schema"], last_user))
        tokens, finish = self._generate(last_user, fixed, max_tokens, stop)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}
        refusal = fault == "refusal"
        rec.status = 200
        if not body.get("stream"):
            message = {
                "role": "assistant",
                "content": None if refusal else "".join(tokens),
                "refusal": "I can't help with that." if refusal else None,
            }
            if self.tool_ask:
                message["content"], finish = None, "tool_calls"
                message["tool_calls"] = [
                    {"id": self._call_id("call_fake"), "type": "function",
                     "function": {"name": name, "arguments": json.dumps(arguments)}}
                    for name, arguments in self.tool_ask
                ]
            self._send_json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(payload: dict) -> None:
            self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")
            if self.state.chunk_delay_s:
                time.sleep(self.state.chunk_delay_s)

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            out = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                out["usage"] = None
            return out

        self._start_sse()
        event(chunk({"role": "assistant", "content": "", "refusal": None}))
        if refusal:
            event(chunk({"refusal": "I can't help with that."}))
            tokens = []
        cut_at = len(tokens) // 2 if fault in ("cut", "cut_clean") else None
        for i, tok in enumerate(tokens):
            if cut_at is not None and i == max(cut_at, 1):
                break
            event(chunk({"content": tok}))
        if cut_at is not None:
            if fault == "cut":
                self._drop()
            else:
                self._end_chunks()
            return
        event(chunk({}, finish))
        if include_usage:
            event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        self._chunk(b"data: [DONE]\n\n")
        self._end_chunks()

    # -- Anthropic
    def _anthropic_auth_ok(self, rec: Recorded) -> bool:
        auth = self.headers.get("authorization", "")
        key = self.headers.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else auth)
        if key != self.state.api_key:
            rec.status = 401
            self._send_json(
                401, {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {key}"}}
            )
            return False
        return True

    def _anthropic(self, body: dict, fault: str | None, fixed: str | None, rec: Recorded) -> None:
        def error(type_: str, message: str) -> dict:
            return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_fake"}

        if not self._anthropic_auth_ok(rec):
            return
        if self._common_fault(
            fault, rec, lambda c, m: error("rate_limit_error" if c.startswith("rate") else "api_error", m)
        ):
            return
        model = body.get("model")
        if model not in KNOWN_MODELS:
            rec.status = 404
            self._send_json(404, error("not_found_error", f"model: {model}"))
            return
        for field_name in ("temperature", "top_p", "top_k"):
            if field_name in body and rec.headers.get("anthropic-version", "") >= "2026-10-21":
                rec.status = 400
                self._send_json(400, error("invalid_request_error", f"{field_name}: Extra inputs are not permitted"))
                return
        messages = body.get("messages", [])
        prompt_tokens = sum(len(_words(_text_of(m.get("content")))) for m in messages) + len(
            _words(_text_of(body.get("system", "")))
        )
        if prompt_tokens > self.state.context_words:
            rec.status = 400
            self._send_json(400, error("invalid_request_error", f"prompt is too long: {prompt_tokens} tokens > "
                                                                f"{self.state.context_words} maximum"))
            return
        last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        last = messages[-1] if messages else {}
        results = [_text_of(block.get("content")) for block in last.get("content") or []
                   if isinstance(last.get("content"), list) and isinstance(block, dict)
                   and block.get("type") == "tool_result"]
        if results and fixed is None:
            fixed = "tool said: " + "; ".join(results)
        fmt = (body.get("output_config") or {}).get("format") or {}
        if fmt.get("type") == "json_schema" and fixed is None:
            fixed = json.dumps(_instance(fmt["schema"], last_user))
        stop = body.get("stop_sequences") or []
        tokens, finish = self._generate(last_user, fixed, body.get("max_tokens"), stop)
        stop_hit = next((s for s in stop if s and s in ((fixed if fixed is not None else "echo: " + last_user))), None)
        stop_reason = {"stop": "stop_sequence" if stop_hit else "end_turn", "length": "max_tokens"}[finish]
        if fault == "refusal":
            stop_reason, tokens = "refusal", tokens[:1]
        usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": len(tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        rec.status = 200
        if not body.get("stream"):
            done = {
                **message,
                "content": [{"type": "text", "text": "".join(tokens)}],
                "stop_reason": stop_reason,
                "stop_sequence": stop_hit if stop_reason == "stop_sequence" else None,
            }
            if self.tool_ask:
                done["stop_reason"], done["stop_sequence"] = "tool_use", None
                done["content"] = [{"type": "tool_use", "id": self._call_id("toolu_fake"), "name": name,
                                    "input": arguments} for name, arguments in self.tool_ask]
            self._send_json(200, done)
            return

        def event(name: str, payload: dict) -> None:
            self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
            if self.state.chunk_delay_s:
                time.sleep(self.state.chunk_delay_s)

        self._start_sse()
        event(
            "message_start", {"type": "message_start", "message": {**message, "usage": {**usage, "output_tokens": 1}}}
        )
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        event("ping", {"type": "ping"})
        cut_at = len(tokens) // 2 if fault in ("cut", "cut_clean", "error_event") else None
        for i, tok in enumerate(tokens):
            if cut_at is not None and i == max(cut_at, 1):
                break
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}},
            )
        if cut_at is not None:
            if fault == "cut":
                self._drop()
                return
            if fault == "error_event":
                event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            self._end_chunks()
            return
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason,
                    "stop_sequence": stop_hit if stop_reason == "stop_sequence" else None,
                },
                "usage": {"output_tokens": len(tokens)},
            },
        )
        event("message_stop", {"type": "message_stop"})
        self._end_chunks()


def main() -> None:
    key = sys.argv[1] if len(sys.argv) > 1 else "sk-test-key"
    server = FakeLLMServer(api_key=key, record=False)
    print(server.port, flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
