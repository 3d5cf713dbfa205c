"""`rung serve`'s app behind a real uvicorn server, driven by the official openai SDK and by
rung's own openai backend."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from rung.records import GenerationRequest, Message

from tests.serve.serving import API_KEY, NAME

HI = [{"role": "user", "content": "hi there"}]


def post(url: str, body: bytes | dict, key: str | None = API_KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_greedy_chat_equals_the_backend_generate(client, tiny_backend):
    reply = client.chat.completions.create(model=NAME, messages=HI, max_tokens=12, temperature=0)
    expected = tiny_backend.generate(GenerationRequest(messages=(Message("user", "hi there"),), max_tokens=12,
                                                       temperature=0))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert reply.model == NAME and reply.object == "chat.completion"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        expected.usage.prompt_tokens, expected.usage.completion_tokens)
    assert reply.usage.total_tokens == expected.usage.total_tokens


def test_stream_with_usage_joins_to_the_plain_answer(client):
    plain = client.chat.completions.create(model=NAME, messages=HI, max_completion_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=NAME, messages=HI, max_completion_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.model == NAME for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(served):
    request = urllib.request.Request(
        served.url + "/v1/chat/completions", method="POST",
        data=json.dumps({"model": NAME, "messages": HI, "max_tokens": 4, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_completions_continue_the_prompt_raw(client, tiny_backend):
    reply = client.completions.create(model=NAME, prompt="def f(", max_tokens=10, temperature=0, stop=["\n\n"])
    expected = tiny_backend.generate(GenerationRequest(prompt="def f(", raw=True, max_tokens=10, temperature=0,
                                                       stop=("\n\n",)))
    assert reply.object == "text_completion" and reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == len("def f(")  # bytes, one token each: no template around it
    streamed = list(client.completions.create(model=NAME, prompt="def f(", max_tokens=10, temperature=0,
                                              stop="\n\n", stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.text


def test_models_health_tokenize_detokenize(client, served, tiny_backend):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with urllib.request.urlopen(served.url + "/health") as reply:  # no key needed
        assert json.loads(reply.read()) == {"status": "ok"}
    status, body = post(served.url + "/tokenize", {"model": NAME, "prompt": "abc"})
    assert status == 200 and body["tokens"] == tiny_backend.tokenizer.encode("abc") and body["count"] == 3
    assert body["max_model_len"] == 128
    status, chat = post(served.url + "/tokenize", {"model": NAME, "messages": HI})
    assert status == 200 and chat["count"] == client.chat.completions.create(
        model=NAME, messages=HI, max_tokens=1).usage.prompt_tokens
    status, text = post(served.url + "/detokenize", {"model": NAME, "tokens": body["tokens"]})
    assert status == 200 and text == {"prompt": "abc"}
    assert post(served.url + "/detokenize", {"model": NAME, "tokens": [10**9]})[0] == 400


def test_errors_are_openai_error_json(client, served):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert caught.value.status_code == 400 and "no-such-model" in caught.value.message
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"

    bad_key = openai.OpenAI(base_url=served.url + "/v1", api_key="bogus-key-456", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad_key.chat.completions.create(model=NAME, messages=HI)
    assert "bogus-key-456" not in str(caught.value.body) and API_KEY not in str(caught.value.body)
    assert post(served.url + "/tokenize", {"prompt": "x"}, key=None)[0] == 401

    with pytest.raises(openai.BadRequestError) as caught:  # 128-token context
        client.chat.completions.create(model=NAME, messages=HI, max_tokens=500)
    message = caught.value.body["message"]
    assert "more than the model's context of 128" in message and "\n" not in message
    with pytest.raises(openai.BadRequestError) as caught:  # streamed: refused before any event
        client.chat.completions.create(model=NAME, messages=HI, max_tokens=500, stream=True)
    assert "context of 128" in caught.value.body["message"]

    with pytest.raises(openai.BadRequestError, match="'top_logprobs' needs"):  # tests/serve/test_logprobs.py: the rest
        client.chat.completions.create(model=NAME, messages=HI, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model=NAME, messages=HI, n=2)

    status, body = post(served.url + "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = post(served.url + "/v1/chat/completions", {"model": NAME, "messages": HI, "max_tokens": "ten"})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = post(served.url + "/v1/chat/completions", {"model": NAME, "messages": []})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = post(served.url + "/v1/chat/completions", {"model": NAME, "messages": HI, "temperature": -1})
    assert status == 400 and "temperature" in body["error"]["message"]
    big = {"model": NAME, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    status, body = post(served.url + "/v1/chat/completions", big)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = post(served.url + "/v1/nothing-here", {})
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
    # and it still answers
    assert client.chat.completions.create(model=NAME, messages=HI, max_tokens=2).usage.completion_tokens >= 1


def test_rung_openai_backend_generates_through_it(served, tiny_backend):
    import rung

    remote = rung.backend("openai", base_url=served.url + "/v1", model=NAME, api_key=API_KEY, max_retries=0)
    request = GenerationRequest(messages=(Message("user", "hi there"),), max_tokens=12, temperature=0)
    expected = tiny_backend.generate(request)
    done = remote.generate(request)
    assert (done.text, done.finish_reason, done.usage) == (expected.text, expected.finish_reason, expected.usage)
    deltas = list(remote.stream(request))
    assert "".join(d.text for d in deltas) == expected.text and deltas[-1].usage == expected.usage


def test_a_client_that_leaves_mid_stream_frees_the_model(client, served):
    import http.client

    for _ in range(3):  # each left stream must release the model's turn for the next request
        connection = http.client.HTTPConnection("127.0.0.1", served.port)
        connection.request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                           body=json.dumps({"model": NAME, "messages": HI, "max_tokens": 100, "stream": True}))
        reply = connection.getresponse()
        assert reply.status == 200 and reply.readline().startswith(b"data: ")
        connection.close()
    assert client.chat.completions.create(model=NAME, messages=HI, max_tokens=2).usage.completion_tokens >= 1


def test_a_chunked_body_over_the_limit_is_413(served):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", served.port)
    pieces = (b"x" * 65536 for _ in range(17))  # no Content-Length: counted as it arrives; just over 1 MiB
    connection.request("POST", "/v1/completions", body=pieces, encode_chunked=True,
                       headers={"Authorization": f"Bearer {API_KEY}", "Transfer-Encoding": "chunked"})
    reply = connection.getresponse()
    assert reply.status == 413 and json.loads(reply.read())["error"]["code"] == "request_too_large"
    connection.close()
