"""rung-anthropic against a real local HTTP server speaking the Messages wire format."""

import asyncio

import pytest
from pydantic import BaseModel

import rung
from tests.fake_llm_server import TEST_KEY as KEY
from rung.records import GenerationRequest, Message
from rung.hosted import APIError


def make(server, **options):
    options.setdefault("model", "claude-test")
    options.setdefault("api_key", KEY)
    options.setdefault("max_retries", 2)
    options.setdefault("timeout", 5)
    return rung.backend("anthropic", base_url=server.anthropic_base_url, **options)


CHAT = GenerationRequest(
    messages=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "tell me about rivers")),
    system="be brief", max_tokens=50, stop=("zzz",),
)


def test_generate_sends_the_whole_request_and_reports_usage(server):
    done = make(server).generate(CHAT)
    assert done.text == "echo: tell me about rivers" and done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (8, 5)
    request = server.requests[-1]
    assert request.path == "/v1/messages"  # base_url has no /v1; the SDK adds it
    body = request.body
    assert body["system"] == "be brief" and body["max_tokens"] == 50 and body["stop_sequences"] == ["zzz"]
    assert body["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "tell me about rivers"},
    ]
    assert not {"temperature", "top_p", "top_k"} & set(body)


def test_finish_reasons_map_to_rungs(server):
    backend = make(server)
    assert backend.generate(GenerationRequest(prompt="a b c d", max_tokens=2)).finish_reason == "length"
    assert backend.generate(GenerationRequest(prompt="a b STOP c", stop=("STOP",))).finish_reason == "stop"
    assert server.requests[-1].body["stop_sequences"] == ["STOP"]


def test_stream_yields_text_then_finish_and_usage_from_the_events(server):
    deltas = list(make(server).stream(CHAT))
    assert "".join(d.text for d in deltas) == "echo: tell me about rivers"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == "stop"
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (8, 5)
    assert server.requests[-1].body["stream"] is True


def test_async_generate_stream_and_batch(server):
    backend = make(server)

    async def main():
        done = await backend.agenerate(GenerationRequest(prompt="async one"))
        deltas = [d async for d in backend.astream(GenerationRequest(prompt="async two"))]
        return done, deltas

    done, deltas = asyncio.run(main())
    assert done.text == "echo: async one" and "".join(d.text for d in deltas) == "echo: async two"
    server.response_delay_s = 0.05
    many = backend.generate_batch([GenerationRequest(prompt=f"q{i}") for i in range(6)], max_concurrency=2)
    assert [c.text for c in many] == [f"echo: q{i}" for i in range(6)]
    assert server.max_in_flight == 2


class Answer(BaseModel):
    answer: str


def test_structured_output_and_token_counting(server):
    backend = make(server)
    assert backend.generate_structured(GenerationRequest(prompt="why"), Answer) == Answer(answer="why")
    fmt = server.requests[-1].body["output_config"]["format"]
    assert fmt["type"] == "json_schema" and "answer" in fmt["schema"]["properties"]
    assert backend.count_tokens("one two three") == 3


def test_sampling_the_api_version_rejects_is_a_clear_error_or_sent_when_allowed(server):
    with pytest.raises(APIError, match="accepts no temperature") as info:
        make(server).generate(GenerationRequest(prompt="x", temperature=0.5))
    assert info.value.kind == "unsupported"
    with pytest.raises(APIError, match="no seed"):
        make(server).generate(GenerationRequest(prompt="x", seed=1))
    old = make(server, api_version="2023-06-01", top_k=5)
    assert old.generate(GenerationRequest(prompt="x", temperature=0.5)).text == "echo: x"
    request = server.requests[-1]
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.body["temperature"] == 0.5 and request.body["top_k"] == 5


def test_retries_on_429_and_500_count_usage_once(server):
    backend = make(server)
    server.fault("429", "500")
    done = backend.generate(GenerationRequest(prompt="a b c"))
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 4)
    assert [r.status for r in server.requests] == [429, 500, 200]
    server.reset()
    server.fault("500")
    deltas = list(backend.stream(GenerationRequest(prompt="a b c")))
    assert deltas[-1].usage.completion_tokens == 4 and [r.status for r in server.requests] == [500, 200]
    server.fault("429", "429", "429")
    with pytest.raises(APIError, match=r"rate limited \(429\).*after 2 retries") as info:
        backend.generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "rate_limit"


def test_a_stall_past_the_timeout_is_retried_then_reported(server):
    server.stall_s = 1.0
    backend = make(server, timeout=0.3, max_retries=1)
    server.fault("stall")
    assert backend.generate(GenerationRequest(prompt="late")).text == "echo: late"
    server.fault("stall", "stall")
    with pytest.raises(APIError, match="within 0.3 s") as info:
        backend.generate(GenerationRequest(prompt="late"))
    assert info.value.kind == "timeout"


@pytest.mark.parametrize("fault", ["cut", "cut_clean", "error_event"])
def test_a_stream_cut_halfway_raises_instead_of_returning_partial_text(server, fault):
    server.fault(fault)
    seen = []
    with pytest.raises(APIError, match="cut off after") as info:
        for delta in make(server, max_retries=0).stream(GenerationRequest(prompt="one two three four five six")):
            seen.append(delta)
    assert info.value.kind == "cut_off" and seen and all(d.finish_reason is None for d in seen)


def test_malformed_and_user_errors_are_single_lines(server):
    backend = make(server, max_retries=0)
    server.fault("malformed")
    with pytest.raises(APIError, match="malformed") as info:
        backend.generate(GenerationRequest(prompt="x"))
    errors = [info.value]
    with pytest.raises(APIError, match="unknown model 'claude-nope'") as info:
        make(server, model="claude-nope").generate(GenerationRequest(prompt="x"))
    errors.append(info.value)
    with pytest.raises(APIError, match="too long") as info:
        backend.generate(GenerationRequest(prompt="word " * 300))
    assert info.value.kind == "context"
    errors.append(info.value)
    server.fault("refusal")
    with pytest.raises(APIError, match="refused") as info:
        list(backend.stream(GenerationRequest(prompt="x")))
    errors.append(info.value)
    assert all("\n" not in str(e) for e in errors)


def test_keys_from_env_and_store_and_a_wrong_key_never_shows(server, monkeypatch):
    from rung.keys import set_key

    with pytest.raises(APIError, match=r"no API key: set \$ANTHROPIC_API_KEY"):
        rung.backend("anthropic")
    set_key("anthropic", KEY)
    assert make(server, api_key=None).generate(GenerationRequest(prompt="s")).text == "echo: s"
    wrong = "sk-ant-WRONG-secret-777777"
    monkeypatch.setenv("ANTHROPIC_API_KEY", wrong)
    backend = make(server, api_key=None, max_retries=0)
    with pytest.raises(APIError, match=r"refused \(401\).*\$ANTHROPIC_API_KEY") as info:
        backend.generate(GenerationRequest(prompt="x"))
    for text in (str(info.value), repr(info.value), repr(backend), repr(backend.options), str(vars(backend))):
        assert wrong not in text and "WRONG-secret" not in text


def test_a_base_url_with_v1_gets_a_hint(server):
    backend = rung.backend("anthropic", model="claude-test", api_key=KEY, base_url=server.url + "/v1", max_retries=0)
    with pytest.raises(APIError, match=r"not found \(404\).*has no /v1"):
        backend.generate(GenerationRequest(prompt="x"))


def test_raw_continuation_is_refused_before_anything_is_sent(server):
    backend = make(server)
    raw = GenerationRequest(prompt="def fibonacci(n):", raw=True)
    sent = len(server.requests)
    for call in (lambda: backend.generate(raw), lambda: list(backend.stream(raw)),
                 lambda: asyncio.run(backend.agenerate(raw))):
        with pytest.raises(APIError, match=r"^anthropic: raw continuation \(--raw\) needs a local backend") as info:
            call()
        assert info.value.kind == "unsupported"
    assert len(server.requests) == sent
