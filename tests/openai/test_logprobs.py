"""Log-probabilities through the `openai` backend against a real `rung serve` on 127.0.0.1 serving
a tiny torch model saved to disk: chat logprobs (plain and streamed), the completions
endpoint's echo scoring (token ids and text) equal to the torch backend's own scoring, rung-eval's
echo scorer equal to its objective scorer, `rung eval -b openai` equal to `-b torch`, and one-line
errors from servers that have no completions endpoint or refuse echo."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("uvicorn")

import rung  # noqa: E402
from rung.errors import RungError  # noqa: E402
from rung.hosted import APIError  # noqa: E402
from rung.records import GenerationRequest, Message  # noqa: E402
from tests.eval.conftest import CONTEXT, save_eval_model  # noqa: E402
from tests.fake_llm_server import TEST_KEY  # noqa: E402
from tests.serve.serving import API_KEY, NAME, ServerThread  # noqa: E402

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parents[2]
RUNG = str(Path(sys.executable).with_name("rung"))
TEXT = "the cat sat on the mat. the dog ran"
PAIRS = [("the cat sat on the", " mat."), ("def add(a, b):\n    return", " a + b"), ("", "rain fell"),
         ("rivers ran over ", "stones"), ("the dog ran to the", " park")]
SHORT_TEXTS = ["the cat sat on the mat.", "print(add(1, 2))", "Rain fell on the hills; rivers ran over stones."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """rung-eval's tiny model folder, its tokenizer given rung's chat template (arith_mc asks for one)."""
    from rung.saved_tokenizer import load_saved_tokenizer

    folder = save_eval_model(tmp_path_factory.mktemp("openai-logprobs") / "model")
    tokenizer = load_saved_tokenizer(folder, "test")
    tokenizer.chat_template = "rung"
    tokenizer.save(folder)
    return folder


@pytest.fixture(scope="module")
def torch_backend(model_dir):
    return rung.backend("torch", model=str(model_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def served(torch_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: torch_backend}, api_key=API_KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def remote(served, model_dir):
    """The openai backend on the served model, with its folder as the tokenizer."""
    return rung.backend("openai", base_url=served.url + "/v1", api_key=API_KEY, model=NAME, tokenizer=str(model_dir),
                        max_retries=0, timeout=60)


def forward_logprobs(backend, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, from rung-torch's `token_logprobs` objective."""
    import numpy as np

    from rung import objectives
    from rung.plugins import get_plugins

    token_logprobs = objectives.load(get_plugins().registry, "token_logprobs", "torch")
    batch = {"input_ids": np.asarray([ids[:-1]]), "targets": np.asarray([ids[1:]])}
    with backend.engine().evaluation() as model:
        value, _ = token_logprobs(model, batch)
    return [float(v) for v in value[0].detach().float().tolist()]


def test_the_backend_says_it_scores_and_knows_the_served_models_context(remote, model_dir):
    assert remote.capabilities.logprobs
    assert remote.context_length == CONTEXT  # the folder's config.json
    assert remote.tokenizer.encode(TEXT) == rung.backend("torch", model=str(model_dir), device="cpu").tokenizer.encode(
        TEXT)


def test_echo_of_token_ids_scores_the_prompt_as_the_torch_model_does(remote, torch_backend):
    ids = [int(i) for i in torch_backend.tokenizer.encode(TEXT)]
    done = remote.generate(GenerationRequest(prompt="", prompt_ids=tuple(ids), echo=True, logprobs=2, max_tokens=0,
                                             temperature=0.0, raw=True))
    prompt = done.prompt_logprobs
    assert [t.id for t in prompt] == ids and prompt[0].logprob is None and prompt[0].top == ()
    assert [t.logprob for t in prompt[1:]] == pytest.approx(forward_logprobs(torch_backend, ids), abs=TOLERANCE)
    local = torch_backend.generate(GenerationRequest(prompt="", prompt_ids=tuple(ids), echo=True, logprobs=2,
                                                     max_tokens=0, raw=True)).prompt_logprobs
    for entry, expected in zip(prompt[1:], local[1:]):
        # OpenAI's {token: logprob} keeps one of two tokens with the same text (the better)
        best_by_text = {}
        for token, value in expected.top:
            best_by_text.setdefault(token, value)
        assert [token for token, _ in entry.top] == list(best_by_text)
        assert [v for _, v in entry.top] == pytest.approx(list(best_by_text.values()), abs=TOLERANCE)
    assert done.text == "" and done.finish_reason == "length" and done.logprobs == ()
    assert done.usage.prompt_tokens == len(ids) and done.usage.completion_tokens == 0


def test_echo_of_text_with_generation_splits_prompt_and_completion(remote, torch_backend):
    request = GenerationRequest(prompt=TEXT, echo=True, logprobs=1, max_tokens=5, temperature=0.0, raw=True)
    done, local = remote.generate(request), torch_backend.generate(request)
    assert done.text == local.text and done.finish_reason == local.finish_reason
    assert [t.token for t in done.prompt_logprobs] == [t.token for t in local.prompt_logprobs]
    assert [t.logprob for t in done.prompt_logprobs[1:]] == pytest.approx(
        [t.logprob for t in local.prompt_logprobs[1:]], abs=TOLERANCE)
    assert [t.token for t in done.logprobs] == [t.token for t in local.logprobs]
    assert [t.logprob for t in done.logprobs] == pytest.approx([t.logprob for t in local.logprobs], abs=TOLERANCE)
    assert all(t.id == -1 for t in done.logprobs)  # the wire format carries no ids (see rung_openai.logprobs)
    plain = remote.generate(GenerationRequest(prompt=TEXT, max_tokens=5, temperature=0.0, raw=True))
    assert plain.text == local.text and plain.logprobs is None and plain.prompt_logprobs is None
    assert asyncio.run(remote.agenerate(request)) == done
    deltas = list(remote.stream(request))  # a stream carries the generated tokens (no echo)
    assert "".join(d.text for d in deltas) == done.text and deltas[-1].finish_reason == done.finish_reason
    assert [(t.token, t.logprob) for d in deltas for t in (d.logprobs or ())] == [
        (t.token, t.logprob) for t in done.logprobs]


def test_chat_logprobs_plain_and_streamed_are_the_models(remote, torch_backend):
    request = GenerationRequest(messages=(Message("user", "the cat sat"),), max_tokens=6, temperature=0.0, logprobs=3)
    done, local = remote.generate(request), torch_backend.generate(request)
    assert done.text == local.text
    assert [t.token for t in done.logprobs] == [t.token for t in local.logprobs]
    assert [t.logprob for t in done.logprobs] == pytest.approx([t.logprob for t in local.logprobs], abs=TOLERANCE)
    for entry, expected in zip(done.logprobs, local.logprobs):
        assert [tok for tok, _ in entry.top] == [tok for tok, _ in expected.top]
        assert [v for _, v in entry.top] == pytest.approx([v for _, v in expected.top], abs=TOLERANCE)
    deltas = list(remote.stream(request))
    streamed = [t for d in deltas for t in (d.logprobs or ())]
    assert "".join(d.text for d in deltas) == done.text
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in done.logprobs]
    assert remote.generate(GenerationRequest(messages=request.messages, max_tokens=6, temperature=0.0)).logprobs is None


def test_echo_scorer_equals_the_objective_scorer(remote, torch_backend):
    from rung_eval.scoring import EchoScorer, ObjectiveScorer, scorer_for

    echo, objective = scorer_for(remote, batch_size=4), scorer_for(torch_backend, batch_size=4)
    assert isinstance(echo, EchoScorer) and isinstance(objective, ObjectiveScorer)
    assert echo.tokens.max_length == CONTEXT - 1  # one short: the server sees the whole row as its prompt
    remote_pairs, local_pairs = echo.loglikelihood(PAIRS), objective.loglikelihood(PAIRS)
    assert [v for v, _ in remote_pairs] == pytest.approx([v for v, _ in local_pairs], abs=TOLERANCE)
    assert [g for _, g in remote_pairs] == [g for _, g in local_pairs]
    remote_texts, local_texts = echo.loglikelihood_rolling(SHORT_TEXTS), objective.loglikelihood_rolling(SHORT_TEXTS)
    assert [n for _, n in remote_texts] == [n for _, n in local_texts]
    assert [v for v, _ in remote_texts] == pytest.approx([v for v, _ in local_texts], abs=TOLERANCE)


def rung_eval(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    environment.pop("RUNG_DEBUG", None)
    return subprocess.run([RUNG, "eval", *args], capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=300)


def test_rung_eval_on_openai_gives_the_torch_backends_accuracy(served, model_dir, tmp_path):
    spec = str(ROOT / "examples" / "eval" / "arith_mc.yaml")
    common = ("--limit", "12", "--json", "-")
    local = rung_eval("-b", "torch", "-m", str(model_dir), "-o", "device=cpu", "-o", "precision=fp32", spec, *common,
                      cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    remote = rung_eval("-b", "openai", "-o", f"base_url={served.url}/v1", "-o", f"tokenizer={model_dir}",
                       "-o", "max_retries=0", "-m", NAME, spec, *common, cwd=tmp_path, OPENAI_API_KEY=API_KEY)
    assert remote.returncode == 0, remote.stderr
    assert API_KEY not in remote.stdout + remote.stderr
    expected = json.loads(local.stdout)["results"]["arith-mc"][str(model_dir)]
    got = json.loads(remote.stdout)["results"]["arith-mc"][NAME]
    assert got["count"] == expected["count"] == 12
    assert got == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------- servers that refuse


class _ChatOnly(BaseHTTPRequestHandler):
    """OpenAI's answer to a chat model on the completions endpoint (404, its own words)."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"error": {"message": "This is a chat model and not supported in the v1/completions "
                                                "endpoint. Did you mean to use v1/chat/completions?",
                                     "type": "invalid_request_error", "param": "model", "code": None}}).encode()
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def chat_only_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    thread.join()


ECHO = GenerationRequest(prompt="", prompt_ids=(5, 6, 7), echo=True, logprobs=1, max_tokens=0, raw=True)


def test_a_chat_only_model_refuses_scoring_in_one_line_without_the_key(chat_only_url):
    backend = rung.backend("openai", base_url=chat_only_url, api_key=TEST_KEY, model="gpt-4o-mini", max_retries=0)
    for call in (lambda: backend.generate(ECHO), lambda: backend.generate_batch([ECHO, ECHO])):
        with pytest.raises(APIError) as info:
            call()
        message = str(info.value)
        assert info.value.kind == "unsupported" and "\n" not in message and TEST_KEY not in message
        assert message.startswith("openai: scoring a prompt (echo with logprobs) needs a local backend or a server "
                                  "with the completions endpoint")
        assert "This is a chat model" in message and "gpt-4o-mini" in message
    raw = GenerationRequest(prompt="def f(", raw=True)
    for call in (lambda: backend.generate(raw), lambda: list(backend.stream(raw))):
        with pytest.raises(APIError, match=r"^openai: raw continuation \(--raw\) needs a local backend") as info:
            call()
        assert info.value.kind == "unsupported"


def test_rung_eval_against_a_server_without_completions_is_one_line(server, model_dir, tmp_path):
    """The fake API server (tests/fake_llm_server.py) has chat only, 404 on /v1/completions:
    rung eval exits non-zero in one line."""
    proc = rung_eval("-b", "openai", "-o", f"base_url={server.openai_base_url}", "-o", f"tokenizer={model_dir}",
                     "-o", "max_retries=0", "-m", "gpt-test", str(ROOT / "examples" / "eval" / "arith_mc.yaml"),
                     "--limit", "2", cwd=tmp_path, OPENAI_API_KEY=TEST_KEY)
    assert server.requests and {r.path for r in server.requests} == {"/v1/completions"}
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and TEST_KEY not in proc.stderr + proc.stdout
    assert lines[-1].startswith("rung: error: ") and "needs a local backend or a server with the completions" in (
        lines[-1])


def test_scoring_without_a_tokenizer_is_refused_in_one_line(served):
    from rung_eval.scoring import scorer_for

    backend = rung.backend("openai", base_url=served.url + "/v1", api_key=API_KEY, model=NAME, max_retries=0)
    with pytest.raises(RungError, match="needs the backend's tokenizer"):
        scorer_for(backend).loglikelihood([("a", " b")])
    # text prompts still echo with their log-probabilities
    done = backend.generate(GenerationRequest(prompt=TEXT, echo=True, logprobs=0, max_tokens=0, raw=True))
    assert "".join(t.token for t in done.prompt_logprobs) == TEXT and done.prompt_logprobs[0].logprob is None
    assert all(t.id == -1 and t.top == () for t in done.prompt_logprobs)
