"""rung serve under operation: /metrics after real requests, the queue limit (429), the request
time limit (504, or an error event in a stream), refused n and max_tokens, and SIGTERM draining
a real `rung serve` process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rung_serve.limits import Limits

from tests.serve.serving import NAME, ServerThread, free_port, wait_for

HI = [{"role": "user", "content": "hi there"}]
RUNG = str(Path(sys.executable).with_name("rung"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "RUNG_LOAD_PLUGINS": "rung-torch,rung-tokenizers,rung-serve"}
# The tiny model with a long context: greedy from "hi" it writes thousands of tokens without
# an end of text (a few ms each here), so a request of many tokens is still running while the
# test sends others.
LONG = {"init_std": 0.3, "max_seq_len": 4096}
MANY = 3000


@pytest.fixture(scope="module")
def long_backend():
    import rung

    return rung.backend("torch", model="test", tokenizer=rung.tokenizer("byte"), device="cpu", architecture=LONG)


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request on its own connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        data = reply.read()
        return reply.status, dict(reply.getheaders()), json.loads(data) if data.startswith((b"{", b"[")) else {}
    finally:
        connection.close()


def open_stream(port: int, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streamed request whose first event has been read: it is running on the model now."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/v1/completions" if "prompt" in body else "/v1/chat/completions",
                       body=json.dumps({**body, "stream": True}), headers={"Content-Type": "application/json"})
    reply = connection.getresponse()
    assert reply.status == 200, reply.read()
    assert reply.readline().startswith(b"data: {")
    return connection, reply


def events_of(reply: http.client.HTTPResponse) -> list[str]:
    """The rest of a stream's `data:` payloads, to the end."""
    return [line[len("data: "):] for line in reply.read().decode().split("\n") if line.startswith("data: ")]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus-client's own parser: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metrics")
    reply = connection.getresponse()
    assert reply.status == 200 and reply.getheader("content-type").startswith("text/plain")
    text = reply.read().decode()
    connection.close()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def poll(predicate, what: str, attempts: int = 400) -> None:
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(0.025)
    raise AssertionError(f"never: {what}")


def test_metrics_after_real_requests(tiny_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: tiny_backend})) as served:
        port = served.port
        usage = []
        for _ in range(2):
            status, _, body = request(port, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 5})
            assert status == 200
            usage.append(body["usage"])
        connection, reply = open_stream(port, {"prompt": "abc", "max_tokens": 7,
                                               "stream_options": {"include_usage": True}})
        streamed = events_of(reply)
        connection.close()
        assert streamed[-1] == "[DONE]"
        usage.append(json.loads(streamed[-2])["usage"])
        assert request(port, "POST", "/v1/chat/completions", {"messages": []})[0] == 400
        assert request(port, "GET", "/no/such/route")[0] == 404
        assert request(port, "GET", "/v1/models/another")[0] == 404
        samples = scrape(port)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    chat, completions = "/v1/chat/completions", "/v1/completions"
    assert value("rung_serve_requests_total", endpoint=chat, status="200") == 2
    assert value("rung_serve_requests_total", endpoint=chat, status="400") == 1
    assert value("rung_serve_requests_total", endpoint=completions, status="200") == 1
    assert value("rung_serve_requests_total", endpoint="other", status="404") == 1  # unknown paths: one label
    assert value("rung_serve_requests_total", endpoint="/v1/models/{name:path}", status="404") == 1
    assert value("rung_serve_prompt_tokens_total", model=NAME) == sum(u["prompt_tokens"] for u in usage)
    assert value("rung_serve_completion_tokens_total", model=NAME) == sum(u["completion_tokens"] for u in usage)
    assert value("rung_serve_request_duration_seconds_count", endpoint=chat) == 3
    assert value("rung_serve_request_duration_seconds_bucket", endpoint=chat, le="+Inf") == 3
    assert value("rung_serve_request_duration_seconds_sum", endpoint=chat) > 0
    assert value("rung_serve_time_to_first_token_seconds_count", model=NAME) == 1  # the one stream
    assert 0 < value("rung_serve_time_to_first_token_seconds_sum", model=NAME) \
        <= value("rung_serve_request_duration_seconds_sum", endpoint=completions)
    assert value("rung_serve_requests_in_flight", model=NAME) == 0
    assert value("rung_serve_queue_depth", model=NAME) == 0
    assert value("rung_serve_http_requests_in_flight") == 1  # the scrape itself


def test_a_full_queue_answers_429_with_retry_after(long_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: long_backend}, limits=Limits(max_queue=1, max_slots=1))) as served:
        port = served.port
        running = open_stream(port, {"prompt": "hi", "max_tokens": MANY, "temperature": 0})
        waiting: dict = {}
        thread = threading.Thread(target=lambda: waiting.update(reply=request(
            port, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 3})))
        thread.start()
        poll(lambda: scrape(port)[("rung_serve_queue_depth", (("model", NAME),))] == 1, "the second request queued")
        for path, body in (("/v1/chat/completions", {"messages": HI, "max_tokens": 3}),
                           ("/v1/completions", {"prompt": "x", "max_tokens": 3, "stream": True})):
            status, headers, refused = request(port, "POST", path, body)
            assert status == 429 and headers["retry-after"] == "1"
            assert refused["error"]["code"] == "queue_full" and refused["error"]["type"] == "rate_limit_error"
        samples = scrape(port)
        assert samples[("rung_serve_requests_in_flight", (("model", NAME),))] == 2
        running[0].close()  # the client leaves: its turn goes to the waiting request
        thread.join(timeout=120)
        status, _, body = waiting["reply"]
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
        poll(lambda: scrape(port)[("rung_serve_requests_in_flight", (("model", NAME),))] == 0, "all done")
        assert scrape(port)[("rung_serve_requests_total", (("endpoint", "/v1/completions"), ("status", "429")))] == 1


def test_a_request_past_the_time_limit_is_cancelled_and_frees_the_model(long_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: long_backend}, limits=Limits(request_timeout=0.5))) as served:
        port = served.port
        # Greedy: a sampled reply may reach an end of text, and finish, before the time limit.
        status, _, body = request(port, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": MANY,
                                                                   "temperature": 0})
        assert status == 504 and body["error"]["code"] == "request_timeout"
        assert "time limit of 0.5 s" in body["error"]["message"]

        connection, reply = open_stream(port, {"prompt": "hi", "max_tokens": MANY, "temperature": 0})
        events = events_of(reply)
        connection.close()
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "request_timeout" and error["type"] == "timeout_error"
        texts = [json.loads(e)["choices"][0]["text"] for e in events[:-2]]
        assert len(texts) < MANY - 1  # cut off, not finished

        status, _, body = request(port, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] >= 1  # the model was freed
        poll(lambda: scrape(port)[("rung_serve_requests_in_flight", (("model", NAME),))] == 0, "nothing in flight")
        assert scrape(port)[("rung_serve_requests_total", (("endpoint", "/v1/completions"), ("status", "504")))] == 1


def test_n_over_1_and_max_tokens_over_the_context_are_400(tiny_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: tiny_backend}, limits=Limits(max_tokens=1000))) as served:
        for path, body in (("/v1/chat/completions", {"messages": HI}), ("/v1/completions", {"prompt": "abc"})):
            status, _, refused = request(served.port, "POST", path, {**body, "n": 2})
            assert status == 400 and refused["error"]["param"] == "n"
            for stream in (False, True):  # 128-token context; streamed: refused before any event
                status, _, refused = request(served.port, "POST", path, {**body, "max_tokens": 500, "stream": stream})
                assert status == 400 and "context of 128" in refused["error"]["message"]


def test_sigterm_drains_the_stream_in_flight_then_exits_0(tmp_path):
    port = free_port()
    args = [RUNG, "serve", "-b", "torch", "-m", "test", "--tokenizer", "byte", "-o", "device=cpu",
            "-o", f"architecture.max_seq_len={LONG['max_seq_len']}", "-o", f"architecture.init_std={LONG['init_std']}",
            "--name", NAME, "--port", str(port), "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", attempts=600)
        connection, reply = open_stream(port, {"prompt": "hi", "max_tokens": 1500, "temperature": 0})
        proc.send_signal(signal.SIGTERM)
        poll(lambda: "draining" in log.read_text(), "the server says it drains")
        try:  # no new requests: 503 while the socket is open, refused once it is closed
            status, _, body = request(port, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 2})
            assert status == 503 and body["error"]["code"] == "draining"
        except ConnectionRefusedError:
            pass
        events = events_of(reply)  # the stream in flight runs to its end
        connection.close()
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
