"""A property-based fuzz of rung serve's OpenAPI schema (schemathesis): requests generated from
/openapi.json, valid ones and invalid ones, against a real server on the tiny model. No answer
is a 5xx, none hangs, every refusal is OpenAI's error JSON in one line, nothing is left in
flight, and the server still answers /health and a normal chat afterwards.

Bounded: max_tokens is capped by the server's limits, examples per operation are few, each
call has a client time limit and the server a request time limit.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from rung_serve.limits import Limits  # noqa: E402

from tests.serve.serving import NAME, ServerThread  # noqa: E402

# (method, path, examples of valid requests, of invalid ones: bodies that break the schema;
# a GET has no body, and any string is a valid model name in the path)
OPERATIONS = [("POST", "/v1/chat/completions", 60, 30), ("POST", "/v1/completions", 60, 30),
              ("POST", "/tokenize", 40, 20), ("POST", "/detokenize", 40, 20), ("GET", "/v1/models/{name}", 20, 0),
              ("GET", "/v1/models", 5, 0), ("GET", "/health", 5, 0), ("GET", "/metrics", 5, 0)]
RUNS = [(method, path, mode, count) for method, path, *counts in OPERATIONS
        for mode, count in zip(("positive", "negative"), counts) if count]


@pytest.fixture(scope="module")
def fuzzed(tiny_backend):
    from rung_serve.app import create_app

    app = create_app({NAME: tiny_backend}, limits=Limits(max_tokens=8, request_timeout=20))
    with ServerThread(app) as served:
        yield served, schemathesis.openapi.from_url(served.url + "/openapi.json")


def test_the_schema_documents_every_endpoint_and_its_body(fuzzed):
    served, schema = fuzzed
    found = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert found == {(method, path) for method, path, *_ in OPERATIONS}
    with urllib.request.urlopen(served.url + "/openapi.json") as reply:
        document = json.loads(reply.read())
    for path, name in (("/v1/chat/completions", "ChatCompletionBody"), ("/v1/completions", "CompletionBody")):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}
    chat = document["components"]["schemas"]["ChatCompletionBody"]
    assert "messages" in chat["required"] and chat["additionalProperties"] is True


@pytest.mark.parametrize("method,path,mode,examples", RUNS, ids=[f"{m} {p} {mode}" for m, p, mode, _ in RUNS])
def test_fuzzed_requests_get_no_5xx_and_the_server_still_answers(fuzzed, method, path, mode, examples):
    served, schema = fuzzed
    operation = schema[path][method]
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        reply = case.call(base_url=served.url, timeout=60)  # a hang fails the call
        seen[reply.status_code] = seen.get(reply.status_code, 0) + 1
        assert reply.status_code < 500, (reply.status_code, reply.text[:500])
        if 400 <= reply.status_code < 500 and path != "/health":
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
            assert "\n" not in error["message"] and "Traceback" not in error["message"]

    fuzz()
    assert seen, "no request was sent"
    assert_still_serving(served)


def assert_still_serving(served) -> None:
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(served.url + "/health") as reply:
        assert json.loads(reply.read()) == {"status": "ok"}
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert answer.choices[0].finish_reason in ("length", "stop") and answer.usage.completion_tokens >= 1
    with urllib.request.urlopen(served.url + "/metrics") as reply:
        samples = {(s.name, tuple(s.labels.items())): s.value
                   for family in text_string_to_metric_families(reply.read().decode()) for s in family.samples}
    assert samples[("rung_serve_requests_in_flight", (("model", NAME),))] == 0  # nothing left holding the model


# Bodies hypothesis' text and numbers never make, each once a 500 here: a lone surrogate (no
# tokenizer takes it), nesting past Python's recursion limit, NaN and infinities (Python's json
# reads them).
ODD_BODIES = {
    "lone surrogate": b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800"}], "prompt": "\\udfff"}',
    "deep nesting": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "NaN": b'{"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "temperature": NaN}',
    "Infinity": b'{"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "top_p": -Infinity}',
    "1e400": b'{"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "temperature": 1e400}',
    "not UTF-8": b'{"prompt": "\xff\xfe"}',
}


@pytest.mark.parametrize("name", ODD_BODIES)
def test_bodies_the_generator_does_not_make_are_400(fuzzed, name):
    import http.client

    served, _ = fuzzed
    for path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        connection.request("POST", path, body=ODD_BODIES[name], headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        error = json.loads(reply.read())["error"]
        connection.close()
        assert reply.status == 400 and "\n" not in error["message"], (path, reply.status, error)
    assert_still_serving(served)
