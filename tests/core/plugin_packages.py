"""Small plugin packages written to disk by tests, then pip-installed like a user's would be."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
dependencies = ["rung"]

[project.entry-points.rung]
{dist} = "{package}.plugin"

[tool.setuptools]
packages = ["{package}"]
"""

# A third-party plugin with a backend, a trainer, a metric sink, a command and lifecycle hooks.
ECHO_PLUGIN = '''
import rung

@rung.hookimpl
def rung_register_backends(register):
    register("echo", impl="rung_echo.impl:EchoBackend", options="rung_echo.impl:EchoOptions",
             summary="repeats the prompt", framework="toy")

@rung.hookimpl
def rung_register_trainers(register):
    register("count", impl="rung_echo.impl:CountTrainer", options="rung_echo.impl:CountOptions",
             summary="counts steps", objectives=("next_token_loss",))

@rung.hookimpl
def rung_register_objectives(register):
    register("next_token_loss", impl="rung_echo.impl:toy_loss", framework="toy",
             summary="a toy framework's next-token loss")

@rung.hookimpl
def rung_register_metric_sinks(register):
    register("memory", impl="rung_echo.impl:MemorySink", summary="keeps metrics in a list")

@rung.hookimpl
def rung_register_commands(register):
    register("hello", impl="rung_echo.impl:hello", summary="Say hello from a plugin.")

@rung.hookimpl
def rung_register_tokenizers(register):
    register("chars", impl="rung_echo.impl:CharTokenizer", summary="one token per character")

@rung.hookimpl
def rung_register_data_sources(register):
    register("lines", impl="rung_echo.impl:Lines", options="rung_echo.impl:LinesOptions",
             summary="one document per line of a file")

@rung.hookimpl
def rung_register_reward_functions(register):
    register("exact", impl="rung_echo.impl:exact", summary="1.0 when the answer equals the reference")

@rung.hookimpl
def rung_after_model_load(run, backend):
    _event(run, "after_model_load", type(backend).__name__)

@rung.hookimpl
def rung_on_step(run, step, metrics):
    _event(run, "on_step", step)

@rung.hookimpl
def rung_on_checkpoint(run, step, path):
    _event(run, "on_checkpoint", step)

@rung.hookimpl
def rung_on_train_end(run, result):
    _event(run, "on_train_end", result.steps)

def _event(run, name, value):
    with open(run.output_dir / "events.txt", "a") as f:
        f.write(f"{name} {value}\\n")
'''

ECHO_IMPL = '''
import click
import rung
from rung.records import Completion, Usage, TrainResult


class EchoOptions(rung.Options):
    prefix: str = "echo: "
    api_key: rung.SecretStr | None = None


class EchoBackend(rung.BaseBackend):
    """Answers with its prefix and the last turn; keeps what it was given, for tests to read."""

    framework = "toy"

    def __init__(self, options, tokenizer=None):
        self.options = options
        self.tokenizer = tokenizer
        self.requests = []

    def generate(self, request):
        self.requests.append(request)
        text = self.options.prefix + request.chat()[-1].content
        return Completion(text, "stop", Usage(1, len(text.split())), "echo")


class CountOptions(rung.TrainingOptions):
    pass


class CharTokenizer:
    vocab_size = 128
    special_tokens = {}
    eos_id = bos_id = pad_id = None

    def __init__(self, options):
        pass

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


class LinesOptions(rung.Options):
    path: str


class Lines:
    def __init__(self, options):
        self.path = options.path

    def read(self):
        with open(self.path) as f:
            for number, line in enumerate(f, 1):
                yield rung.Document(line.rstrip("\\n"), id=str(number), source=self.path)


def toy_loss(model, batch):
    return 0.0, {}


def exact(completion, reference):
    return float(completion.strip() == reference.strip())


class CountTrainer:
    def __init__(self, options):
        self.options = options

    def train(self, run):
        backend = run.backend()
        tokenizer = run.tokenizer()
        documents = list(run.data().read()) if run.config.data is not None else []
        if tokenizer is not None:
            run.log(0, {"tokens": float(sum(len(tokenizer.encode(d.text)) for d in documents))})
        for step in range(1, self.options.steps + 1):
            run.log(step, {"loss": 1.0 / step, "echo": backend.generate(rung.GenerationRequest(prompt="x")).text})
        run.checkpointed(self.options.steps, str(run.output_dir))
        steps = self.options.steps
        return TrainResult(steps=steps, output_dir=str(run.output_dir), final_loss=1.0 / steps)


class MemorySink:
    records = []

    def __init__(self, options, run_dir=None):
        pass

    def log(self, step, metrics):
        MemorySink.records.append((step, dict(metrics)))

    def close(self):
        pass


@click.command()
def hello():
    """Say hello."""
    click.echo("hello from rung-echo")
'''

BROKEN_AT_IMPORT = '''
raise RuntimeError("this plugin is broken on purpose")
'''

BROKEN_AT_REGISTRATION = '''
import rung

@rung.hookimpl
def rung_register_backends(register):
    register("half", impl="nowhere:Nothing")
    raise ValueError("registration failed on purpose")
'''

DUPLICATE_NAME = '''
import rung

@rung.hookimpl
def rung_register_backends(register):
    register("echo", impl="rung_twin.plugin:Nothing")
    register("twin-only", impl="rung_twin.plugin:Nothing")
'''

PACKAGES = {
    "rung-echo": ("rung_echo", {"plugin.py": ECHO_PLUGIN, "impl.py": ECHO_IMPL}),
    "rung-broken": ("rung_broken", {"plugin.py": BROKEN_AT_IMPORT}),
    "rung-badreg": ("rung_badreg", {"plugin.py": BROKEN_AT_REGISTRATION}),
    "rung-twin": ("rung_twin", {"plugin.py": DUPLICATE_NAME}),
}


def write_package(root: Path, dist: str) -> Path:
    """Write the source of one plugin distribution under `root`; return its folder."""
    package, files = PACKAGES[dist]
    folder = root / dist
    (folder / package).mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, version="1.2.3", package=package))
    (folder / package / "__init__.py").write_text("")
    for name, source in files.items():
        (folder / package / name).write_text(textwrap.dedent(source))
    return folder


def pip_install(folders: list[Path], target: Path) -> None:
    """pip-install the folders into `target`, a site directory put on PYTHONPATH by tests."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *map(str, folders)],
        check=True,
    )
