"""`rung serve CONFIG`: several models (one with a LoRA adapter) from a YAML file, the API key
from rung's key store, one-line config errors, and only configured models served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rung.errors import ConfigError
from rung.records import GenerationRequest

from tests.serve.serving import ServerThread, free_port, wait_for

RUNG = str(Path(sys.executable).with_name("rung"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "RUNG_LOAD_PLUGINS": "rung-torch,rung-tokenizers,rung-serve"}
PROMPT = "def f("


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny model and a LoRA adapter for it whose B matrices are not zero (so it changes
    the answers)."""
    import torch

    import rung
    from rung.records import LoraSpec

    root = tmp_path_factory.mktemp("models")
    base, adapter = root / "base", root / "adapter"
    rung.backend("torch", model="test", tokenizer=rung.tokenizer("byte"), device="cpu",
                 architecture={"init_std": 0.3}).save(base)
    tuned = rung.backend("torch", model=str(base), device="cpu")
    tuned.adapters().add_lora(LoraSpec(r=4, seed=0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in tuned.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    tuned.adapters().save_adapter(adapter, base=str(base))
    return base, adapter


def write_config(path: Path, base: Path, adapter: Path, server: str) -> Path:
    path.write_text(f"""\
models:
  - name: base
    backend: {{name: torch, model: {base}, device: cpu}}
  - name: tuned
    backend:
      name: torch
      model: {base}
      adapter: {adapter}
      device: cpu
server: {server}
limits: {{max_tokens: 16}}
""")
    return path


def greedy(backend, max_tokens=12):
    request = GenerationRequest(prompt=PROMPT, raw=True, max_tokens=max_tokens, temperature=0)
    return backend.generate(request).text


def call(url: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_config_serves_each_model_with_its_adapter_and_a_stored_key(folders, tmp_path):
    import rung

    base, adapter = folders
    port, secret = free_port(), "stored-serve-key-321"
    store = tmp_path / "rung-config"
    store.mkdir()
    (store / "keys.json").write_text(json.dumps({"serve": secret}))
    os.chmod(store / "keys.json", 0o600)
    config = write_config(tmp_path / "serve.yaml", base, adapter, f"{{port: {port}, api_key_store: serve, "
                          "log_level: warning}")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([RUNG, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env={**ENV, "RUNG_CONFIG_DIR": str(store)})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/health", attempts=600)
        status, models = call(url + "/v1/models", key=secret)
        assert status == 200 and [m["id"] for m in models["data"]] == ["base", "tuned"]
        assert call(url + "/v1/models")[0] == 401
        answers = {}
        for name in ("base", "tuned"):
            status, body = call(url + "/v1/completions", {"model": name, "prompt": PROMPT, "max_tokens": 12,
                                                          "temperature": 0}, key=secret)
            assert status == 200 and body["model"] == name
            answers[name] = body["choices"][0]["text"]
        status, body = call(url + "/v1/completions", {"model": "base", "prompt": PROMPT, "max_tokens": 17},
                            key=secret)
        assert status == 400 and body["error"]["param"] == "max_tokens" and "limit of 16" in body["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    assert answers["base"] == greedy(rung.backend("torch", model=str(base), device="cpu"))
    assert answers["tuned"] == greedy(rung.backend("torch", model=str(base), adapter=str(adapter), device="cpu"))
    assert answers["tuned"] != answers["base"]
    text = log.read_text()
    assert f"rung serve: models 'base' (torch), 'tuned' (torch) at http://127.0.0.1:{port}/v1 (API key required)" \
        in text and secret not in text
    assert proc.returncode == 0  # SIGTERM drains, then exits 0


BAD = {
    "unknown backend": ("models:\n  - name: m\n    backend: {name: torchh, model: test}\n",
                        "bad.yaml:3: models.0.backend.name: unknown backend 'torchh' (did you mean 'torch'?)"),
    "misspelt option": ("models:\n  - name: m\n    backend:\n      name: torch\n      devise: cpu\n",
                        "bad.yaml:5: models.0.backend.devise: unknown key 'devise' (did you mean 'device'?)"),
    "bad limit": ("models:\n  - name: m\n    backend: {name: torch}\nlimits:\n  max_queue: -1\n",
                  "bad.yaml:5: limits.max_queue: Input should be greater than or equal to 0 (got -1)"),
    "twice": ("models:\n  - name: m\n    backend: {name: torch}\n  - name: m\n    backend: {name: torch}\n",
              "bad.yaml:4: models.1.name: model name 'm' is served twice"),
    "no models": ("server: {port: 8000}\n", "bad.yaml: models: Field required"),
    "bad name": ("models:\n  - name: ../m\n    backend: {name: torch}\n", "bad.yaml:2: models.0.name: Value error, a "
                 "served name is"),
    "secret shown masked": ("models:\n  - name: m\n    backend: {name: torch}\nserver: {api_key: [x]}\n",
                            "bad.yaml:4: server.api_key: Input should be a valid string"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_config_is_one_line_naming_file_and_path(case, tmp_path):
    from rung_serve.config import load_serve_config

    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_serve_config(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / expected.split(":")[0]))
    assert expected.split(":", 1)[1] in message


def test_rung_serve_refuses_a_bad_config_in_one_line(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  - name: m\n    backend: {name: torch, model: test}\n"
                    "server: {api_key: secret-value-555, portt: 1}\n")
    proc = subprocess.run([RUNG, "serve", str(path)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"rung: error: {path}:4: server.portt: unknown key 'portt' (did you mean 'port'?); "
                                   "allowed: host, port, api_key, api_key_store, log_level")
    missing = tmp_path / "keyed.yaml"
    missing.write_text("models:\n  - name: m\n    backend: {name: torch, model: test}\n"
                       "server: {api_key_store: nothere}\n")
    proc = subprocess.run([RUNG, "serve", str(missing)], capture_output=True, text=True, timeout=120,
                          env={**ENV, "RUNG_CONFIG_DIR": str(tmp_path / "empty")})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "server.api_key_store: the key store has no key 'nothere'" in proc.stderr
    unloadable = tmp_path / "unloadable.yaml"
    unloadable.write_text("models:\n  - name: m\n    backend: {name: torch, model: test, device: cpu}\n")
    proc = subprocess.run([RUNG, "serve", str(unloadable)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"rung: error: {unloadable}:3: models.0.backend: ") and "tokenizer" in proc.stderr
    both = subprocess.run([RUNG, "serve", str(path), "-b", "torch"], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert both.returncode != 0 and "not both" in both.stderr and len(both.stderr.strip().splitlines()) == 1


class _OpenedUnder:
    """Files opened under `root` while active, seen through Python's audit hooks (every `open`,
    from Python or from C extensions using the io module, raises an `open` audit event)."""

    hooked = False
    watching: list[tuple[Path, list[str]]] = []
    lock = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root, self.opened = root.resolve(), []

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            for root, opened in cls.watching:
                if path.startswith(str(root)):
                    opened.append(path)

    def __enter__(self) -> list[str]:
        with self.lock:
            if not _OpenedUnder.hooked:
                sys.addaudithook(_OpenedUnder._hook)  # hooks cannot be removed: it only reads `watching`
                _OpenedUnder.hooked = True
            self.watching.append((self.root, self.opened))
        return self.opened

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.watching.remove((self.root, self.opened))


def test_a_client_cannot_make_the_server_load_a_model_or_read_a_file(folders, tiny_backend, tmp_path):
    from rung_serve.app import create_app

    base, adapter = folders
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    with ServerThread(create_app({"tiny": tiny_backend})) as served, _OpenedUnder(base.parent) as opened, \
            _OpenedUnder(tmp_path) as opened_here:
        for name in (str(base), str(adapter), "../" + base.name, str(secret), "file://" + str(base), "test", "torch"):
            for endpoint, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                                   ("/v1/completions", {"prompt": "hi"}), ("/tokenize", {"prompt": "hi"})):
                status, reply = call(served.url + endpoint, {"model": name, "max_tokens": 2, **body})
                assert status == 400 and reply["error"]["code"] == "model_not_found", (name, endpoint, reply)
            status, reply = call(served.url + "/v1/models/" + name.lstrip("/"))
            assert status == 404 and reply["error"]["code"] in ("model_not_found", "not_found")
        for path in ("/" + str(secret), "/../../../../" + str(secret), "/static/../" + secret.name):
            assert call(served.url + path)[0] == 404
        status, models = call(served.url + "/v1/models")
        assert [m["id"] for m in models["data"]] == ["tiny"]
        assert call(served.url + "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})[0] == 200
        assert opened == [] and opened_here == []
        (base / "config.json").read_text()  # the watch sees a real open: the empty lists above mean something
    assert opened == [str((base / "config.json").resolve())]
