"""How a suite reaches its backends: a tiny local torch model (batched) beside a hosted one, each
hosted backend within its own concurrency, all backends side by side, failures kept per reply."""

from __future__ import annotations

import json

from rung_compare.cache import ReplyCache
from rung_compare.runner import run_suite
from rung_compare.suite import load_suite

from tests.fake_llm_server import TEST_KEY as KEY


def test_a_local_model_answers_in_batches_as_it_answers_alone_and_a_rerun_loads_nothing(
        server, tmp_path, tiny_model_dir, monkeypatch):
    import rung
    from rung.records import GenerationRequest, Message

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (tmp_path / "cases.csv").write_text("topic,__expected\n" + "".join(f"t{i},contains: t{i}\n" for i in range(6)))
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(f"""
prompts: ["Tell me of {{{{topic}}}}"]
options: {{max_tokens: 6, temperature: 0}}
backends:
  - {{name: torch, model: {tiny_model_dir}, device: cpu, label: tiny, concurrency: 4}}
  - {{name: openai, model: gpt-test, base_url: "{server.openai_base_url}", label: oa}}
cases: cases.csv
""")
    suite = load_suite(suite_path)
    cache = ReplyCache(tmp_path / "cache")
    run = run_suite(suite, cache)
    tiny = [r for r in run.results if r.backend == "tiny"]
    alone = rung.backend("torch", model=str(tiny_model_dir), device="cpu")
    for result in tiny:  # each reply of a batch of 4 is what the model says to the request alone
        request = GenerationRequest(messages=(Message("user", f"Tell me of {result.case.vars['topic']}"),),
                                    max_tokens=6, temperature=0.0)
        assert result.request == request
        assert result.reply.text == alone.generate(request).text
        assert result.reply.completion_tokens > 0 and result.reply.error is None
    assert all(r.passed for r in run.results if r.backend == "oa")  # echo contains the topic
    assert run.asked == {"tiny": 6, "oa": 6}

    server.reset()
    again = run_suite(load_suite(suite_path), cache)
    assert again.asked == {"tiny": 0, "oa": 0} and server.requests == []
    assert [r.reply.text for r in again.results] == [r.reply.text for r in run.results]


def test_each_hosted_backend_keeps_its_own_concurrency_and_they_run_side_by_side(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    server.response_delay_s = 0.5  # long enough that every request in flight overlaps
    cases = "\n".join(json.dumps({"n": i}) for i in range(8))
    (tmp_path / "cases.jsonl").write_text(cases + "\n")
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(f"""
prompts: ["count {{{{n}}}}"]
backends:
  - {{name: openai, model: gpt-test, base_url: "{server.openai_base_url}", concurrency: 2}}
  - {{name: anthropic, model: claude-test, base_url: "{server.anthropic_base_url}", concurrency: 3}}
cases: cases.jsonl
""")
    run = run_suite(load_suite(suite_path), ReplyCache(tmp_path / "cache"))
    assert len(server.requests) == 16 and all(r.passed for r in run.results)
    assert server.max_in_flight == 2 + 3  # both backends at once, neither past its own limit

    server.reset()
    server.response_delay_s = 0.5
    only_openai = suite_path.read_text().replace("concurrency: 2", "concurrency: 1").replace(
        "  - {name: anthropic", "#")
    suite_path.write_text(only_openai)
    run_suite(load_suite(suite_path), ReplyCache(tmp_path / "cache2"))
    assert server.max_in_flight == 1


def test_a_failed_request_is_that_reply_s_error_and_is_not_cached(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(f"""
prompts: ["hi {{{{x}}}}"]
backends: [{{name: openai, model: gpt-test, base_url: "{server.openai_base_url}", concurrency: 1, max_retries: 0}}]
tests: [{{vars: {{x: a}}}}, {{vars: {{x: b}}}}]
""")
    server.fault("500")  # the first request fails, the second is answered
    cache = ReplyCache(tmp_path / "cache")
    run = run_suite(load_suite(suite_path), cache)
    failed = [r for r in run.results if r.reply.error]
    assert len(failed) == 1 and "server error (500)" in failed[0].reply.error and not failed[0].passed
    assert KEY not in failed[0].reply.error
    server.reset()
    again = run_suite(load_suite(suite_path), cache)
    assert len(server.requests) == 1 and all(r.reply.error is None for r in again.results)


def test_a_prompt_can_be_a_rung_template_beside_the_suite(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (tmp_path / "greet.yaml").write_text(
        "system: Be {{ tone }}.\nprompt: Greet {{ name }}\nexamples:\n  - {user: Greet Ann, assistant: Hi Ann}\n"
        "variables:\n  tone: warm\ntemperature: 0.3\nmodel: some-other-model\n")
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(f"""
prompts: [{{template: greet}}]
options: {{max_tokens: 9}}
backends: [{{name: openai, model: gpt-test, base_url: "{server.openai_base_url}"}}]
tests: [{{vars: {{name: Bo}}, assert: [{{type: equals, value: "echo: Greet {{{{name}}}}"}}]}}]
""")
    run = run_suite(load_suite(suite_path), ReplyCache(tmp_path / "cache"))
    assert [r.passed for r in run.results] == [True] and run.results[0].prompt == "greet"
    body = server.requests[-1].body
    assert body["messages"] == [{"role": "system", "content": "Be warm."}, {"role": "user", "content": "Greet Ann"},
                                {"role": "assistant", "content": "Hi Ann"}, {"role": "user", "content": "Greet Bo"}]
    # the template's sampling is a default the suite's options add to; the suite's backend picks the model
    assert body["model"] == "gpt-test" and body["temperature"] == 0.3
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 9
