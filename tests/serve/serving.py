"""Helpers of the rung-serve tests: a free port, bounded polling, uvicorn in a thread, and
concurrent openai clients (`ask`, `serve_everyone`)."""

from __future__ import annotations

import socket
import threading
import time

API_KEY = "serve-test-key-123"
NAME = "tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, attempts: int = 200) -> None:
    """Poll `url` until it answers (bounded attempts, not a time limit)."""
    import urllib.request

    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


class ServerThread:
    """uvicorn serving `app` on a free port in a daemon thread; `stop()` shuts it down."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        wait_for(self.url + "/health")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()


async def ask(client, body: dict) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of one request to model NAME through an
    `openai.AsyncOpenAI` client: a completion if `body` has a prompt, a chat if it has messages,
    streamed (with usage) if body["stream"]."""
    fields = {k: v for k, v in body.items() if k != "stream"}
    chat = "messages" in body
    create = client.chat.completions.create if chat else client.completions.create
    if not body["stream"]:
        reply = await create(model=NAME, **fields)
        choice = reply.choices[0]
        return (choice.message.content if chat else choice.text), choice.finish_reason, reply.usage.completion_tokens
    pieces, reason, tokens = [], None, None
    stream = await create(model=NAME, stream=True, stream_options={"include_usage": True}, **fields)
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            pieces.append((choice.delta.content if chat else choice.text) or "")
            reason = choice.finish_reason or reason
    return "".join(pieces), reason, tokens


def mixed_bodies(texts: list[str], max_tokens: list[int], sampled: bool = True) -> list[dict]:
    """One request per text, of `max_tokens[i]` tokens: completions for even i, chat for odd;
    streamed when i % 4 is 1 or 2; greedy, or with `sampled` every third (i % 3 == 2) seeded
    top-p sampling."""
    out = []
    for i, (text, tokens) in enumerate(zip(texts, max_tokens, strict=True)):
        body: dict = {"max_tokens": tokens, "temperature": 0}
        if sampled and i % 3 == 2:
            body.update(temperature=1.0, top_p=0.9, seed=i)
        if i % 2:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        body["stream"] = i % 4 in (1, 2)
        out.append(body)
    return out


def serve_everyone(backend, requests: list[dict], logprobs_body: dict):
    """Serve `backend` as model NAME on 127.0.0.1 and send every body of `requests` at once
    (through `ask`) beside one completions request of `logprobs_body`; returns the app's served
    model (its scheduler, if it batches), the replies in order, and the scored completion."""
    import asyncio

    import openai
    from rung_serve.app import create_app

    app = create_app({NAME: backend}, api_key=API_KEY)
    served_model = app.state.served[NAME]
    with ServerThread(app) as served:
        async def everyone():
            client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)
            try:
                return await asyncio.gather(*(ask(client, body) for body in requests),
                                            client.completions.create(model=NAME, **logprobs_body))
            finally:
                await client.close()

        *replies, scored = asyncio.run(everyone())
    return served_model, replies, scored


def assert_served_as_alone(backend, unbatched, requests: list[dict]) -> None:
    """Served at once, with continuous batching, every body of `requests` gets the reply
    `backend.generate` gives it alone, the requests shared decoding steps, and a
    log-probabilities request beside them ran through generate with the same scores; `unbatched`
    (the same model with `continuous_batching: false`) serves one request at a time, the same
    replies."""
    import pytest
    from rung_serve.openai_format import chat_request, completion_request

    expected = []
    for body in requests:
        done = backend.generate(chat_request(body) if "messages" in body else completion_request(body))
        expected.append((done.text, done.finish_reason, done.usage.completion_tokens))
    logprobs_body = {"prompt": "the dog ran", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    scored_alone = backend.generate(completion_request(logprobs_body))

    served_model, replies, scored = serve_everyone(backend, requests, logprobs_body)
    scheduler = served_model.scheduler
    assert scheduler is not None and served_model.lock is None
    assert replies == expected
    assert len({text for text, _, _ in replies}) == len(requests)
    assert scheduler.peak_active > 1  # requests shared decoding steps
    assert scheduler.steps < sum(tokens for _, _, tokens in replies)
    assert (scheduler.active, scheduler.waiting, scheduler.cancelled_slots) == (0, 0, 0)
    # the log-probabilities request ran through generate, its tokens and scores as alone
    assert scored.choices[0].text == scored_alone.text
    assert scored.choices[0].logprobs.token_logprobs == pytest.approx([t.logprob for t in scored_alone.logprobs])

    served_model, replies, _ = serve_everyone(unbatched, requests, logprobs_body)
    assert served_model.scheduler is None and served_model.lock is not None  # one request at a time
    assert replies == expected
