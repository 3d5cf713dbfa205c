"""rung-eval scorers on one tiny model folder: the same numbers on torch, hf and jax, the same as
lm-evaluation-harness's own `hf` model (HFLM) where it is installed, every token of a text
scored once, the greedy flag, echo scoring, scoring a training model, and the one line of a
backend that cannot score."""

from __future__ import annotations

import pytest

from rung.errors import RungError
from rung.records import GenerationRequest
from tests.eval.conftest import CONTEXT, CORPUS

RELATIVE = 1e-5
TEXTS = [" ".join(CORPUS) * 3, CORPUS[1], "short", "", CORPUS[3]]  # three windows, one, a few tokens, none
PAIRS = [("the cat sat on the", " mat."), ("def add(a, b):\n   ", " return a + b"), ("", "the dog"),
         ("Rain fell ", "on the hills"), (" ".join(CORPUS) * 2, " the end")]  # an empty context; one cut


def scores(scorer) -> tuple[list, list]:
    return scorer.loglikelihood_rolling(TEXTS), scorer.loglikelihood(PAIRS)


@pytest.fixture(scope="module")
def torch_scores(eval_model_dir):
    import rung
    from rung_eval.scoring import scorer_for

    backend = rung.backend("torch", model=str(eval_model_dir), device="cpu", precision="fp32")
    return scores(scorer_for(backend, batch_size=3))


def assert_close(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for (a, x), (b, y) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=RELATIVE, abs=1e-6) and x == y


@pytest.mark.parametrize("name", ["hf", "jax"])
def test_every_backend_scores_alike(name, eval_backend, torch_scores):
    from rung_eval.scoring import scorer_for

    rolling, pairs = scores(scorer_for(eval_backend(name), batch_size=4))
    assert_close(rolling, torch_scores[0])
    assert_close(pairs, torch_scores[1])


def test_the_harness_hf_model_gives_the_same_numbers(eval_model_dir, torch_scores):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(eval_model_dir), device="cpu", batch_size=2, dtype="float32")
    texts = [t for t in TEXTS if t]  # the harness asserts on an empty text
    theirs = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    ours = [ll for (ll, _), t in zip(torch_scores[0], TEXTS) if t]
    assert ours == pytest.approx(theirs, rel=RELATIVE)
    pairs = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)])
    assert_close(torch_scores[1], pairs)


def test_every_token_is_scored_once_and_a_stride_gives_more_context(eval_backend, torch_scores):
    from rung_eval.scoring import scorer_for

    backend = eval_backend("torch")
    counts = [n for _, n in torch_scores[0]]
    assert counts == [len(backend.tokenizer.encode(t)) for t in TEXTS]
    assert counts[0] > 2 * CONTEXT and torch_scores[0][3] == (0.0, 0)
    # a text inside one window is the prefix token's continuation, scored as loglikelihood("", text)
    assert torch_scores[0][1][0] == pytest.approx(scorer_for(backend).loglikelihood([("", TEXTS[1])])[0][0],
                                                  rel=RELATIVE)
    strided = scorer_for(backend, stride=CONTEXT // 4).loglikelihood_rolling(TEXTS)
    assert [n for _, n in strided] == counts
    assert strided[1][0] == pytest.approx(torch_scores[0][1][0], rel=RELATIVE)  # one window: no change
    assert strided[0][0] != pytest.approx(torch_scores[0][0][0], rel=RELATIVE)  # later tokens see more


def test_greedy_flag_is_whether_greedy_decoding_gives_the_continuation(eval_backend):
    from rung_eval.scoring import scorer_for

    backend = eval_backend("torch")
    context = "the cat sat on"
    ids = backend.tokenizer.encode(context)
    greedy = backend.generate(GenerationRequest(prompt_ids=tuple(ids), prompt=context, max_tokens=6,
                                                temperature=0.0, raw=True, logprobs=0))
    produced = [t.id for t in greedy.logprobs]
    # the longest start of the greedy tokens that is text the pair tokenises back into (a random
    # model emits byte pieces of characters, which decode to U+FFFD)
    kept = max(k for k in range(len(produced) + 1)
               if backend.tokenizer.encode(context + backend.tokenizer.decode(produced[:k])) == ids + produced[:k])
    assert kept >= 1, produced
    continuation = backend.tokenizer.decode(produced[:kept])
    other = " dog" if not continuation.startswith(" dog") else " mat"
    for name in ("torch", "hf"):  # (jax: the same objective numbers, test_every_backend_scores_alike)
        flags = [g for _, g in scorer_for(eval_backend(name)).loglikelihood([(context, continuation),
                                                                             (context, other)])]
        assert flags == [True, False], name


def test_scoring_a_training_model_inside_its_engines_evaluation_context(eval_backend, torch_scores):
    from rung_eval.scoring import scorer_for

    backend = eval_backend("torch")
    with backend.engine().evaluation() as model:
        rolling = scorer_for(backend, model=model).loglikelihood_rolling(TEXTS)
    assert_close(rolling, torch_scores[0])


def test_echo_scoring_equals_objective_scoring_on_the_same_windows(eval_backend):
    """Echo sends each row as a prompt, so its windows are one token shorter than the context."""
    from rung_eval.scoring import EchoScorer, scorer_for

    backend = eval_backend("torch")
    echo = EchoScorer(backend, batch_size=4)
    assert echo.tokens.max_length == CONTEXT - 1
    objective = scorer_for(backend, max_length=CONTEXT - 1)
    assert_close(echo.loglikelihood_rolling(TEXTS[:3]), objective.loglikelihood_rolling(TEXTS[:3]))
    assert_close(echo.loglikelihood(PAIRS[:4]), objective.loglikelihood(PAIRS[:4]))


def test_generate_until_is_the_backends_generation(eval_backend):
    from rung_eval.scoring import scorer_for

    backend = eval_backend("torch")
    requests = [GenerationRequest(prompt="the cat", max_tokens=6, temperature=0.0, raw=True),
                GenerationRequest(prompt="def add", max_tokens=3, temperature=0.0, raw=True)]
    assert scorer_for(backend).generate_until(requests) == [backend.generate(r).text for r in requests]


def test_a_backend_that_cannot_score_says_so_in_one_line():
    import rung
    from rung_eval.scoring import scorer_for

    backend = rung.backend("anthropic", model="claude-test", api_key="sk-ant-test-not-a-key",
                           base_url="http://127.0.0.1:9")
    with pytest.raises(RungError) as caught:
        scorer_for(backend)
    message = str(caught.value)
    assert "'anthropic'" in message and "cannot score" in message and "\n" not in message
    assert "sk-ant" not in message


def test_bad_windows_are_refused(eval_backend):
    from rung_eval.scoring import scorer_for

    with pytest.raises(RungError, match="stride must be between 1 and max_length"):
        scorer_for(eval_backend("torch"), stride=CONTEXT + 1)
