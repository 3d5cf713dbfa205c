"""rung-openai against a real local HTTP server speaking the chat completions wire format."""

import asyncio

import pytest
from pydantic import BaseModel

import rung
from tests.fake_llm_server import TEST_KEY as KEY
from rung.records import GenerationRequest, Message
from rung.hosted import APIError


def make(server, **options):
    options.setdefault("model", "gpt-test")
    options.setdefault("api_key", KEY)
    options.setdefault("max_retries", 2)
    options.setdefault("timeout", 5)
    return rung.backend("openai", base_url=server.openai_base_url, **options)


CHAT = GenerationRequest(
    messages=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "tell me about rivers")),
    system="be brief", temperature=0.3, top_p=0.9, max_tokens=50, stop=("zzz",), seed=7,
)


def test_generate_sends_the_whole_request_and_reports_usage(server):
    backend = make(server)
    done = backend.generate(CHAT)
    assert done.text == "echo: tell me about rivers"
    assert done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (8, 5)
    body = server.requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "tell me about rivers"},
    ]
    assert (body["temperature"], body["top_p"], body["seed"], body["stop"]) == (0.3, 0.9, 7, ["zzz"])
    assert body["max_tokens"] == 50  # a base_url of our own: the field every compatible server knows
    assert "stream" not in body


def test_options_give_defaults_and_requests_override_them(server):
    backend = make(
        server, temperature=1.5, max_tokens=2, max_tokens_field="max_completion_tokens", extra_body={"top_k": 3}
    )
    done = backend.generate(GenerationRequest(prompt="one two three four"))
    assert done.finish_reason == "length" and done.usage.completion_tokens == 2
    body = server.requests[-1].body
    assert body["temperature"] == 1.5 and body["max_completion_tokens"] == 2 and body["top_k"] == 3
    backend.generate(GenerationRequest(prompt="x", temperature=0.1))
    assert server.requests[-1].body["temperature"] == 0.1


def test_stream_yields_text_then_finish_and_usage_asked_of_the_api(server):
    backend = make(server)
    deltas = list(backend.stream(CHAT))
    assert "".join(d.text for d in deltas) == "echo: tell me about rivers"
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    last = deltas[-1]
    assert last.finish_reason == "stop" and (last.usage.prompt_tokens, last.usage.completion_tokens) == (8, 5)
    body = server.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_async_generate_stream_and_batch(server):
    backend = make(server)

    async def main():
        done = await backend.agenerate(GenerationRequest(prompt="async one"))
        deltas = [d async for d in backend.astream(GenerationRequest(prompt="async two"))]
        many = await backend.agenerate_batch([GenerationRequest(prompt=f"n{i}") for i in range(4)], max_concurrency=2)
        return done, deltas, many

    done, deltas, many = asyncio.run(main())
    assert done.text == "echo: async one"
    assert "".join(d.text for d in deltas) == "echo: async two" and deltas[-1].usage.completion_tokens == 3
    assert [c.text for c in many] == [f"echo: n{i}" for i in range(4)]


def test_generate_batch_keeps_order_and_bounds_concurrency(server):
    server.response_delay_s = 0.05
    backend = make(server)
    done = backend.generate_batch([GenerationRequest(prompt=f"req {i}") for i in range(8)], max_concurrency=3)
    assert [c.text for c in done] == [f"echo: req {i}" for i in range(8)]
    assert 2 <= server.max_in_flight <= 3
    assert len(server.requests) == 8


class Answer(BaseModel):
    answer: str


def test_structured_output_into_a_pydantic_model(server):
    backend = make(server)
    assert backend.capabilities.structured_output
    result = backend.generate_structured(GenerationRequest(prompt="capital of France"), Answer)
    assert result == Answer(answer="capital of France")
    fmt = server.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["properties"]["answer"]["type"] == "string"
    server.reply('{"wrong": 1}')
    with pytest.raises(APIError, match="does not fit the requested schema") as info:
        backend.generate_structured(GenerationRequest(prompt="x"), Answer)
    assert info.value.kind == "malformed"


def test_retries_on_429_and_500_count_usage_once(server):
    backend = make(server, max_retries=2)
    server.fault("429", "500")
    done = backend.generate(GenerationRequest(prompt="a b c"))
    assert done.usage.completion_tokens == 4 and done.usage.prompt_tokens == 3
    assert [r.status for r in server.requests] == [429, 500, 200]
    assert [r.headers["x-stainless-retry-count"] for r in server.requests] == ["0", "1", "2"]
    server.reset()
    server.fault("429")
    deltas = list(backend.stream(GenerationRequest(prompt="a b c")))
    assert deltas[-1].usage.completion_tokens == 4 and "".join(d.text for d in deltas) == "echo: a b c"
    assert [r.status for r in server.requests] == [429, 200]


def test_retries_run_out_with_one_clear_line(server):
    backend = make(server, max_retries=1)
    server.fault("429", "429")
    with pytest.raises(APIError) as info:
        backend.generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "rate_limit" and "429" in str(info.value) and "after 1 retry" in str(info.value)
    assert len(server.requests) == 2
    server.fault("500", "500", "500")
    with pytest.raises(APIError, match=r"server error \(500\)"):
        make(server, max_retries=2).generate(GenerationRequest(prompt="x"))


def test_a_stall_past_the_timeout_is_retried_then_reported(server):
    server.stall_s = 1.0
    backend = make(server, timeout=0.3, max_retries=1)
    server.fault("stall")
    assert backend.generate(GenerationRequest(prompt="late")).text == "echo: late"
    server.fault("stall", "stall")
    with pytest.raises(APIError, match="no answer .* within 0.3 s after 1 retry") as info:
        backend.generate(GenerationRequest(prompt="late"))
    assert info.value.kind == "timeout"


@pytest.mark.parametrize("fault", ["cut", "cut_clean"])
def test_a_stream_cut_halfway_raises_instead_of_returning_partial_text(server, fault):
    backend = make(server, max_retries=0)
    server.fault(fault)
    seen = []
    with pytest.raises(APIError, match="cut off after .* the text is incomplete") as info:
        for delta in backend.stream(GenerationRequest(prompt="one two three four five six")):
            seen.append(delta)
    assert info.value.kind == "cut_off"
    assert seen and all(d.finish_reason is None for d in seen)  # partial text was never marked complete


def test_malformed_json_is_one_clear_error(server):
    backend = make(server, max_retries=0)
    server.fault("malformed")
    with pytest.raises(APIError, match="malformed response") as info:
        backend.generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "malformed"


def test_user_errors_are_single_lines(server):
    with pytest.raises(APIError) as info:
        make(server, model="no-such-model").generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "model" and "unknown model 'no-such-model'" in str(info.value)
    with pytest.raises(APIError) as info:
        make(server).generate(GenerationRequest(prompt="word " * 300))
    assert info.value.kind == "context" and "too long" in str(info.value)
    server.fault("refusal")
    with pytest.raises(APIError, match="refused") as info:
        make(server).generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "refused"
    for error in (info.value,):
        assert "\n" not in str(error)


def test_keys_come_from_config_env_or_the_key_store(server, monkeypatch):
    from rung.keys import set_key

    with pytest.raises(APIError, match="no API key: set \\$OPENAI_API_KEY") as info:
        rung.backend("openai", model="gpt-test")  # the real API needs a key; none anywhere
    assert info.value.kind == "auth"
    set_key("openai", KEY)
    assert make(server, api_key=None).generate(GenerationRequest(prompt="stored")).text == "echo: stored"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-from-env-000000")
    with pytest.raises(APIError, match=r"refused \(401\).*came from \$OPENAI_API_KEY") as info:
        make(server, api_key=None, max_retries=0).generate(GenerationRequest(prompt="x"))
    assert "sk-wrong-from-env" not in str(info.value)


def test_a_wrong_key_never_shows_even_when_the_server_echoes_it(server):
    from rung.config import config_to_yaml, make_config

    wrong = "sk-wrong-VERY-secret-999999"
    backend = make(server, api_key=wrong, max_retries=0)
    with pytest.raises(APIError) as info:
        backend.generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "auth"
    texts = [str(info.value), repr(info.value), repr(backend), repr(backend.options), str(backend.options),
             str(backend.__dict__), config_to_yaml(make_config({"backend": {"name": "openai", "api_key": wrong}}))]
    for text in texts:
        assert wrong not in text and "VERY-secret" not in text


def test_count_tokens_says_it_cannot(server):
    with pytest.raises(NotImplementedError, match="no token-counting") as info:
        make(server).count_tokens("hello")
    assert isinstance(info.value, APIError) and info.value.kind == "unsupported"


def test_a_base_url_without_v1_gets_a_hint(server):
    backend = rung.backend("openai", model="gpt-test", api_key=KEY, base_url=server.url, max_retries=0)
    with pytest.raises(APIError, match=r"not found \(404\).*usually ends in /v1") as info:
        backend.generate(GenerationRequest(prompt="x"))
    assert info.value.kind == "not_found"


def test_raw_continuation_never_goes_out_as_a_chat_turn(server):
    """Raw text goes to the completions endpoint (rung serve, vLLM, llama.cpp have one); a server
    without it refuses, and the backend says so in one line: nothing is disguised as a user turn."""
    backend = make(server)
    raw = GenerationRequest(prompt="def fibonacci(n):", raw=True)
    sent = len(server.requests)
    for call in (lambda: backend.generate(raw), lambda: list(backend.stream(raw)),
                 lambda: asyncio.run(backend.agenerate(raw)), lambda: backend.generate_batch([raw])):
        with pytest.raises(APIError, match=r"^openai: raw continuation \(--raw\) needs a local backend or a server "
                                           r"with the completions endpoint") as info:
            call()
        assert info.value.kind == "unsupported" and isinstance(info.value, NotImplementedError)
    assert all(r.path.endswith("/v1/completions") for r in server.requests[sent:])


def test_the_backend_needs_only_the_core_not_the_prompt_commands():
    import json
    import subprocess
    import sys

    probe = ("import json, sys, rung; b = rung.backend('openai', model='m', api_key='k', base_url='http://127.0.0.1:1/v1');"
             "from rung.plugins import get_plugins; p = get_plugins();"
             "print(json.dumps({'modules': sorted(sys.modules), 'commands': sorted(p.registry.items['command'])}))")
    env = {**__import__("os").environ, "RUNG_LOAD_PLUGINS": "rung-openai"}
    out = json.loads(
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert "rung_prompt" not in out["modules"] and "rung.hosted" in out["modules"]
    assert not {"prompt", "chat", "logs", "keys"} & set(out["commands"])
    core = subprocess.run([sys.executable, "-c", "import json, sys, rung.hosted, rung.keys; "
                                                 "print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True).stdout
    assert not {"openai", "anthropic", "rung_prompt"} & set(json.loads(core))  # the hosted base is SDK-free
