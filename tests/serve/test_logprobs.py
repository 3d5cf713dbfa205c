"""Log-probabilities through `rung serve`, driven by the official openai SDK on a tiny torch model:
chat's logprobs/top_logprobs (plain and streamed), completions' logprobs and echo (the
log-likelihood requests lm-evaluation-harness sends), and a 400 from a backend without them."""

from __future__ import annotations

import openai
import pytest

from rung.records import GenerationRequest, Message
from tests.serve.serving import API_KEY, NAME, ServerThread

HI = [{"role": "user", "content": "hi there"}]
CONTEXT, CONTINUATION = "the cat sat on", " the mat"
TOLERANCE = 1e-4


def rung_sequence_logprob(backend, context: str, continuation: str) -> float:
    """rung's own scoring: the torch `sequence_logprobs` objective over the continuation's tokens."""
    import torch

    from rung_torch.objectives import sequence_logprobs

    context_ids, continuation_ids = backend.tokenizer.encode(context), backend.tokenizer.encode(continuation)
    labels = [-100] * len(context_ids) + continuation_ids
    with torch.no_grad():
        total, _ = sequence_logprobs(backend.model, {"input_ids": [context_ids + continuation_ids], "labels": [labels]})
    return float(total[0])


def assert_offsets_index_text(logprobs, text: str) -> None:
    for token, offset in zip(logprobs.tokens, logprobs.text_offset):
        assert text[offset:offset + len(token)] == token
    assert "".join(logprobs.tokens) == text


def test_chat_logprobs_and_top_logprobs_are_the_backends(client, tiny_backend):
    reply = client.chat.completions.create(model=NAME, messages=HI, max_tokens=8, temperature=0, logprobs=True,
                                           top_logprobs=3)
    expected = tiny_backend.generate(GenerationRequest(messages=(Message("user", "hi there"),), max_tokens=8,
                                                       temperature=0, logprobs=3))
    content = reply.choices[0].logprobs.content
    assert [c.token for c in content] == [t.token for t in expected.logprobs]
    assert [c.logprob for c in content] == pytest.approx([t.logprob for t in expected.logprobs], abs=TOLERANCE)
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the best
    plain = client.chat.completions.create(model=NAME, messages=HI, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == reply.choices[0].message.content


def test_streamed_chat_carries_the_same_logprobs(client):
    plain = client.chat.completions.create(model=NAME, messages=HI, max_tokens=10, temperature=0, logprobs=True,
                                           top_logprobs=2)
    chunks = list(client.chat.completions.create(model=NAME, messages=HI, max_tokens=10, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True))
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs
                for entry in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in plain.choices[0].logprobs.content]
    assert all(c.choices[0].logprobs.content for c in chunks if c.choices and c.choices[0].delta.content)


def test_completions_echo_scores_a_continuation_as_rung_does(client, tiny_backend):
    """lm-evaluation-harness's log-likelihood request: prompt = context + continuation, echo, logprobs,
    max_tokens 0, temperature 0; it sums the continuation's token_logprobs."""
    prompt = CONTEXT + CONTINUATION
    reply = client.completions.create(model=NAME, prompt=prompt, echo=True, logprobs=1, max_tokens=0, temperature=0)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert choice.text == prompt and choice.finish_reason == "length"
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(len(top) == 1 for top in logprobs.top_logprobs[1:])
    assert_offsets_index_text(logprobs, choice.text)
    context_tokens = len(tiny_backend.tokenizer.encode(CONTEXT))
    assert sum(logprobs.token_logprobs[context_tokens:]) == pytest.approx(
        rung_sequence_logprob(tiny_backend, CONTEXT, CONTINUATION), abs=TOLERANCE)
    assert reply.usage.prompt_tokens == len(logprobs.tokens) and reply.usage.completion_tokens == 0


def test_completions_echo_of_token_ids_with_one_new_token(client, tiny_backend):
    """lm-evaluation-harness 0.4's form: the prompt as token ids, max_tokens 1, [ctxlen:-1] scored."""
    ids = tiny_backend.tokenizer.encode(CONTEXT + CONTINUATION)
    reply = client.completions.create(model=NAME, prompt=[ids], echo=True, logprobs=2, max_tokens=1, temperature=0)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 1
    by_text = client.completions.create(model=NAME, prompt=CONTEXT + CONTINUATION, echo=True, logprobs=2,
                                        max_tokens=1, temperature=0).choices[0].logprobs
    assert logprobs.tokens == by_text.tokens
    assert logprobs.token_logprobs[1:] == pytest.approx(by_text.token_logprobs[1:], abs=TOLERANCE)
    assert_offsets_index_text(logprobs, reply.choices[0].text)


def test_completions_logprobs_without_echo_index_the_completion(client, tiny_backend):
    reply = client.completions.create(model=NAME, prompt="def f(", max_tokens=8, temperature=0, logprobs=2)
    choice = reply.choices[0]
    expected = tiny_backend.generate(GenerationRequest(prompt="def f(", raw=True, max_tokens=8, temperature=0,
                                                       logprobs=2))
    assert choice.logprobs.tokens == [t.token for t in expected.logprobs]
    # Offsets count each token's text from the start of the choice's text (as vLLM does: a byte of a
    # character shows as U+FFFD, so the tokens of random bytes need not spell the decoded text).
    lengths = [len(t) for t in choice.logprobs.tokens]
    assert choice.logprobs.text_offset == [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(max(top.values()) == lp for top, lp in zip(choice.logprobs.top_logprobs,
                                                          choice.logprobs.token_logprobs))
    chunks = list(client.completions.create(model=NAME, prompt="def f(", max_tokens=8, temperature=0, logprobs=2,
                                            stream=True))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert tokens == choice.logprobs.tokens and offsets == choice.logprobs.text_offset


@pytest.mark.parametrize("kwargs, param", [
    (dict(max_tokens=0), "max_tokens"),  # 0 only with echo
    (dict(logprobs=6), "logprobs"),  # completions: at most 5
    (dict(echo=True, logprobs=1, stream=True), "echo"),
])
def test_bad_completion_logprob_fields_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=NAME, prompt="hi", **kwargs)
    assert caught.value.body["param"] == param


def test_top_logprobs_need_logprobs_true(client):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model=NAME, messages=HI, max_tokens=2, top_logprobs=2)


class WithoutLogprobs:
    """A backend that can generate but not say log-probabilities: the tiny model, capability off."""

    def __init__(self, inner) -> None:
        from rung.interfaces import Capabilities

        self.inner, self.name = inner, "without-logprobs"
        self.capabilities = Capabilities(chat=True, streaming=True, logprobs=False)
        self.tokenizer = inner.tokenizer

    def __getattr__(self, name):  # generate, stream, agenerate, ... of the model itself
        if name in ("decode_slots", "score_heads", "engine"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_a_backend_without_logprobs_answers_400(tiny_backend):
    from rung_serve.app import create_app

    proxy = WithoutLogprobs(tiny_backend)
    with ServerThread(create_app({"proxy": proxy}, api_key=API_KEY)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="log-probabilities") as caught:
            client.chat.completions.create(model="proxy", messages=HI, max_tokens=2, logprobs=True)
        assert caught.value.body["param"] == "logprobs"
        with pytest.raises(openai.BadRequestError, match="log-probabilities"):
            client.completions.create(model="proxy", prompt="hi", max_tokens=0, echo=True, logprobs=1)
        assert client.chat.completions.create(model="proxy", messages=HI, max_tokens=2).choices[0].message.content \
            is not None  # without logprobs the model answers


def test_rungs_openai_backend_carries_logprobs_through_a_proxy(served):
    """rung's openai backend (logprobs through chat and the completions endpoint) proxying the
    served model: a second rung serve in front of it answers with the same numbers."""
    import rung
    from rung_serve.app import create_app

    proxy = rung.backend("openai", base_url=served.url + "/v1", api_key=API_KEY, model=NAME, max_retries=0,
                         timeout=30)
    assert proxy.capabilities.logprobs
    direct = openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)
    with ServerThread(create_app({"proxy": proxy}, api_key=API_KEY)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=API_KEY, max_retries=0)
        through = client.chat.completions.create(model="proxy", messages=HI, max_tokens=3, logprobs=True,
                                                 temperature=0)
    alone = direct.chat.completions.create(model=NAME, messages=HI, max_tokens=3, logprobs=True, temperature=0)
    got = [t.logprob for t in through.choices[0].logprobs.content]
    want = [t.logprob for t in alone.choices[0].logprobs.content]
    assert got == pytest.approx(want, abs=1e-5)
    assert through.choices[0].message.content == alone.choices[0].message.content


def test_lm_evaluation_harness_local_completions_loglikelihood(served, tiny_backend, tmp_path):
    """lm-evaluation-harness's own `local-completions` model scores (context, continuation) pairs
    through the server; its numbers equal rung's scoring. Optional: lm_eval is not in the default install."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (lm_eval) is not installed "
                                                    "(optional: pip install 'lm-eval[api]')")
    pytest.importorskip("tenacity", reason="lm-evaluation-harness's API models need its [api] extra (tenacity)")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tokenizer_dir = tmp_path / "tokenizer"
    tiny_backend.tokenizer.save(tokenizer_dir)
    model = LocalCompletionsAPI(base_url=served.url + "/v1/completions", model=NAME, tokenizer_backend="huggingface",
                                tokenizer=str(tokenizer_dir), max_retries=1, num_concurrent=1, max_length=256)
    model.header = {"Authorization": f"Bearer {API_KEY}"}
    pairs = [(CONTEXT, CONTINUATION), ("def f(", "x):")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    results = model.loglikelihood(requests, disable_tqdm=True)
    for (context, continuation), (logprob, _greedy) in zip(pairs, results):
        assert logprob == pytest.approx(rung_sequence_logprob(tiny_backend, context, continuation), abs=TOLERANCE)
    assert lm_eval.__name__ == "lm_eval"
