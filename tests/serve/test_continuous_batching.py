"""Continuous batching behind rung serve: 32 clients at once through the official async openai
SDK, each greedy reply the one `generate` gives alone; a client that disconnects frees its slot."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

from rung_serve.limits import Limits
from rung_serve.openai_format import chat_request, completion_request

from tests.serve.serving import API_KEY, NAME, ServerThread, ask, mixed_bodies

openai = pytest.importorskip("openai")

CLIENTS = 32


def bodies() -> list[dict]:
    """32 greedy requests of different lengths, chat and completions, streamed and not."""
    return mixed_bodies([f"Client {i} says" + " hello" * (i % 7) for i in range(CLIENTS)],
                        [8 + (i * 5) % 29 for i in range(CLIENTS)], sampled=False)


def test_32_concurrent_clients_each_get_the_reply_generate_gives_alone(tiny_backend):
    from rung_serve.app import create_app

    requests = bodies()
    expected = []
    for body in requests:
        rung_request = chat_request(body) if "messages" in body else completion_request(body)
        done = tiny_backend.generate(rung_request)
        expected.append((done.text, done.finish_reason, done.usage.completion_tokens))
    app = create_app({NAME: tiny_backend}, api_key=API_KEY)
    scheduler = app.state.served[NAME].scheduler
    with ServerThread(app) as served:
        async def everyone():
            client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)
            try:
                return await asyncio.gather(*(ask(client, body) for body in requests))
            finally:
                await client.close()

        replies = asyncio.run(everyone())
    assert replies == expected
    assert len({text for text, _, _ in replies}) == CLIENTS
    # Throughput sanity: requests shared decoding steps (fewer steps than tokens generated).
    assert scheduler.peak_active > 1
    assert scheduler.steps < sum(tokens for _, _, tokens in replies)
    assert (scheduler.active, scheduler.waiting, scheduler.cancelled_slots) == (0, 0, 0)


@pytest.fixture(scope="module")
def long_backend():
    """The tiny model with a long context: greedy from "hi" writes thousands of tokens without
    an end of text, so a long request is still running while the test acts."""
    import rung

    return rung.backend("torch", model="test", tokenizer=rung.tokenizer("byte"), device="cpu",
                        architecture={"init_std": 0.3, "max_seq_len": 4096})


def test_a_client_that_disconnects_frees_its_slot_for_the_next(long_backend):
    from rung_serve.app import create_app

    app = create_app({NAME: long_backend}, limits=Limits(max_slots=1))
    scheduler = app.state.served[NAME].scheduler
    with ServerThread(app) as served:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
        connection.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                           body=json.dumps({"prompt": "hi", "max_tokens": 4000, "temperature": 0, "stream": True}))
        reply = connection.getresponse()
        assert reply.status == 200 and reply.readline().startswith(b"data: {")
        assert scheduler.active == 1
        connection.close()  # the client leaves mid-stream

        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        following = client.completions.create(model=NAME, prompt="next", max_tokens=12, temperature=0)
        assert scheduler.cancelled_slots == 1  # freed before it finished, not after 4000 tokens
        assert following.choices[0].text == long_backend.generate(completion_request(
            {"prompt": "next", "max_tokens": 12, "temperature": 0})).text
        assert (scheduler.active, scheduler.waiting) == (0, 0)


def until(predicate, what: str) -> None:
    """Wait for `predicate` (a hang guard of 10 minutes, not a time limit: it never binds unless
    the condition never comes)."""
    for _ in range(120_000):
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def scraped(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus-client's own parser: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics") as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_client_that_disconnects_before_a_whole_reply_frees_its_slot_at_once(long_backend):
    """Not streamed: the client closes its socket while its 4000-token request decodes, and the
    slot is freed by cancelling the request, long before the reply would have ended."""
    pytest.importorskip("prometheus_client")
    from rung_serve.app import create_app

    app = create_app({NAME: long_backend}, limits=Limits(max_slots=1))
    scheduler = app.state.served[NAME].scheduler
    with ServerThread(app) as served:
        body = json.dumps({"prompt": "hi", "max_tokens": 4000, "temperature": 0}).encode()
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            until(lambda: scheduler.active == 1 and scheduler.steps > 0, "the request decoding in its slot")
        # the client has gone, its answer unsent
        until(lambda: scheduler.active == 0, "the slot free")
        assert scheduler.cancelled_slots == 1  # freed by the cancel, not by the request's end
        assert scheduler.steps < 4000
        key = ("rung_serve_requests_total", (("endpoint", "/v1/completions"), ("status", "499")))
        until(lambda: scraped(served.url).get(key) == 1, "the request counted as 499 (client closed)")
        assert scraped(served.url)[("rung_serve_requests_in_flight", (("model", NAME),))] == 0
        # The model serves the next request as usual, and one whose client stays gets its reply.
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        following = client.completions.create(model=NAME, prompt="next", max_tokens=12, temperature=0)
        assert following.choices[0].text == long_backend.generate(completion_request(
            {"prompt": "next", "max_tokens": 12, "temperature": 0})).text
        assert (scheduler.active, scheduler.cancelled_slots) == (0, 1)


def test_the_scheduler_frees_cancelled_requests_and_ends_its_idle_thread(long_backend):
    from rung.records import GenerationRequest
    from rung_serve.scheduling import Scheduler

    scheduler = Scheduler(long_backend.decode_slots(2), NAME, idle_exit_s=0.05)
    request = GenerationRequest(prompt="Scheduled", max_tokens=20, temperature=0)
    endless = GenerationRequest(prompt="hi", max_tokens=3000, temperature=0)

    async def until(predicate):
        for _ in range(400):  # bounded polling
            if predicate():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("never happened")

    async def scenario():
        stream = scheduler.stream(endless)
        await stream.__anext__()
        await stream.aclose()  # a stream closed early frees its slot
        await until(lambda: scheduler.cancelled_slots == 1 and scheduler.active == 0)
        waiting = asyncio.create_task(scheduler.generate(endless))
        await until(lambda: scheduler.active == 1)
        waiting.cancel()  # so does a generate cancelled (a time limit, a dropped request)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return await asyncio.gather(*(scheduler.generate(request) for _ in range(3)))  # 3 requests, 2 slots

    first = asyncio.run(scenario())
    assert first == [long_backend.generate(request)] * 3
    assert scheduler.cancelled_slots == 2 and scheduler.peak_active == 2
    for _ in range(400):  # bounded polling: the idle worker ends
        if scheduler._thread is None:
            break
        threading.Event().wait(0.01)
    assert scheduler._thread is None
    assert asyncio.run(scheduler.generate(request)) == first[0]  # a new worker starts for the next request


def test_a_backend_whose_decode_slots_returns_none_is_served_one_at_a_time(tiny_backend, monkeypatch):
    from rung_serve.scheduling import _Model

    assert _Model(NAME, tiny_backend).scheduler is not None
    monkeypatch.setattr(tiny_backend, "decode_slots", lambda max_slots=32: None)
    model = _Model(NAME, tiny_backend)
    assert model.scheduler is None and model.lock is not None and model.slots is None
