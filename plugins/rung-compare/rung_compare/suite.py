"""The comparison suite: a YAML file of prompts, backends and test cases, validated up front.

    description: capitals
    prompts:                                  # Jinja text, file://x.txt, {messages: [...]}, {template: NAME}
      - "What is the capital of {{country}}?"
    backends:                                 # rung backend sections, plus label/concurrency/prices/sampling
      - {name: openai, model: gpt-4o-mini, label: mini, concurrency: 8, prices: {prompt: 0.15, completion: 0.6}}
      - {name: torch, model: runs/sft/model, sampling: {max_tokens: 32}}
    options: {max_tokens: 64, temperature: 0}  # sampling of every request (a backend's `sampling` wins)
    defaultTest:                              # merged into every case
      assert: [{type: icontains, value: "{{capital}}"}]
    tests:                                    # inline cases, and/or files: `cases: capitals.jsonl`
      - vars: {country: France, capital: Paris}
        assert: [{type: regex, value: "^[A-Z]"}]
    judge: mini                               # the backend judge assertions ask, unless they name one

Every error is one line that starts `file:line: dotted.path`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from rung.errors import ConfigError, PluginError
from rung.options import Options

from rung_compare.assertions import Assertion, parse_assertion
from rung_compare.cases import CASE_KEYS, RawCase, read_cases
from rung_compare.prompts import Prompt, parse_prompt
from rung_compare.where import Key, Locator

TOP_KEYS = {"description", "prompts", "backends", "tests", "cases", "defaultTest", "options", "judge"}
BACKEND_EXTRAS = {"label", "concurrency", "prices", "sampling"}
# Backend options that change how a request travels, not what the model answers: not part of a reply's cache key.
TRANSPORT = {"timeout", "max_retries", "max_concurrency", "api_key_env", "key_name"}
PROMPTFOO_NAMES = {"providers": "backends", "assertions": "assert"}


class Sampling(Options):
    """How every request samples (None: the backend's default)."""

    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop: list[str] | None = None
    seed: int | None = None


class Prices(Options):
    """What a backend charges, in the config's currency per 1,000 tokens."""

    prompt: float = Field(0.0, ge=0, description="per 1k prompt (input) tokens")
    completion: float = Field(0.0, ge=0, description="per 1k completion (output) tokens")


@dataclass
class BackendSpec:
    """One backend of the suite (a column of the table) or a judge's backend."""

    label: str
    where: str
    section: Any  # the validated backend section
    concurrency: int | None = None
    prices: Prices | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)  # what the cache key knows of it

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.prices is None:
            return None
        return prompt_tokens / 1000 * self.prices.prompt + completion_tokens / 1000 * self.prices.completion


@dataclass(frozen=True)
class Case:
    """One test case: its variables and every assertion a reply to it must pass."""

    index: int
    where: str
    vars: Mapping[str, Any]
    assertions: tuple[Assertion, ...]
    description: str | None = None


@dataclass
class Suite:
    path: Path
    prompts: list[Prompt]
    backends: list[BackendSpec]
    cases: list[Case]
    sampling: dict[str, Any]
    judges: dict[str, BackendSpec] = field(default_factory=dict)  # label -> backend, inline judges included
    description: str | None = None

    def backend(self, label: str) -> BackendSpec:
        for spec in self.backends:
            if spec.label == label:
                return spec
        return self.judges[label]


def load_suite(path: str | Path) -> Suite:
    """The suite at `path`, every part validated (errors: `file:line: path: what`)."""
    from rung.yaml_lines import load_yaml_with_lines

    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    return SuiteReader(path, data, Locator(path, lines)).read()


class SuiteReader:
    """Reads one suite document; holds what parsing a part needs from the others."""

    def __init__(self, path: Path, data: Any, loc: Locator) -> None:
        self.path, self.data, self.loc = path, data, loc
        self.base_dir = path.resolve().parent
        self.backends: list[BackendSpec] = []
        self.judges: dict[str, BackendSpec] = {}
        self.default_judge: str | None = None

    def read(self) -> Suite:
        data, loc = self.data, self.loc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{loc.origin}: a suite is a mapping with prompts, backends and tests")
        for key in data:
            if key not in TOP_KEYS:
                if key in PROMPTFOO_NAMES:
                    raise loc.error((key,), f"rung calls these '{PROMPTFOO_NAMES[key]}' (promptfoo's '{key}')")
                close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise loc.error((key,), f"unknown key{hint}; allowed: {', '.join(sorted(TOP_KEYS))}")
        description = data.get("description")
        sampling = self._options(data.get("options"), ("options",), Sampling)
        prompts = self._prompts()
        self._backends()
        if data.get("judge") is not None:
            self.default_judge = self._judge_label(data["judge"], loc(("judge",)), ("judge",))
        cases = self._cases()
        return Suite(self.path, prompts, self.backends, cases, sampling.model_dump(exclude_none=True), self.judges,
                     None if description is None else str(description))

    # -- parts
    def _options(self, raw: Any, key: Key, model: type[Options]) -> Any:
        if raw is None:
            return model()
        if not isinstance(raw, Mapping):
            raise self.loc.error(key, "a mapping")
        try:
            return model.model_validate(dict(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            sub = (*key, *first["loc"])
            raise self.loc.error(sub, first["msg"]) from None

    def _prompts(self) -> list[Prompt]:
        raw = self.data.get("prompts")
        if not isinstance(raw, list) or not raw:
            raise self.loc.error(("prompts",), "give a list of prompts (Jinja text with {{variables}})")
        prompts = [parse_prompt(item, self.loc(("prompts", i)), i, self.base_dir) for i, item in enumerate(raw)]
        _unique_labels(prompts)
        return prompts

    def _backends(self) -> None:
        raw = self.data.get("backends")
        if not isinstance(raw, list) or not raw:
            raise self.loc.error(("backends",), "give a list of backend sections, e.g. {name: openai, model: "
                                                "gpt-4o-mini}")
        self.backends = [self._backend(item, self.loc, ("backends", i)) for i, item in enumerate(raw)]
        labels = [b.label for b in self.backends]
        for spec, section in zip(self.backends, raw):
            if labels.count(spec.label) > 1 and "label" not in section:
                spec.label = f"{spec.label} ({spec.section.name})"
        labels = [b.label for b in self.backends]
        for i, spec in enumerate(self.backends):
            if labels.count(spec.label) > 1:
                raise self.loc.error(("backends", i, "label"), f"two backends are labelled '{spec.label}'; give one "
                                                               "a different label")

    def _backend(self, raw: Any, loc: Locator, key: Key) -> BackendSpec:
        from rung.config import config_to_dict, section_model
        from rung.plugins import get_plugins

        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise loc.error(key, "a backend is a mapping with a name (openai, anthropic, torch, hf, ...)")
        data = {k: v for k, v in raw.items() if k not in BACKEND_EXTRAS}
        model = data.get("model")
        if isinstance(model, str) and not Path(model).is_absolute() and (self.base_dir / model).exists():
            data["model"] = str(self.base_dir / model)  # a local model's folder, beside the suite
        registry = get_plugins().registry
        try:
            model_type = section_model(registry, "backend", data["name"])
        except PluginError as exc:
            raise loc.error((*key, "name"), str(exc)) from None
        try:
            section = model_type.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise loc.error((*key, *first["loc"]), first["msg"]) from None
        concurrency = raw.get("concurrency")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise loc.error((*key, "concurrency"), "requests in flight at once: a whole number, 1 or more")
        prices = self._options(raw["prices"], (*key, "prices"), Prices) if raw.get("prices") is not None else None
        sampling = self._options(raw.get("sampling"), (*key, "sampling"), Sampling).model_dump(exclude_none=True)
        label = raw.get("label") or (str(section.model) if getattr(section, "model", None) else section.name)
        identity = {k: v for k, v in config_to_dict(section).items() if k not in TRANSPORT}
        identity.update(_model_files(getattr(section, "model", None)))
        return BackendSpec(str(label), loc(key), section, concurrency, prices, sampling, identity)

    def _judge_label(self, value: Any, where: str, key: Key | None = None) -> str:
        """The label of the backend a judge asks: a suite backend's label, or an inline section."""
        if value is None:
            if self.default_judge is None:
                raise ConfigError(f"{where}: a judge needs a backend: backend: LABEL (one of "
                                  f"{', '.join(b.label for b in self.backends)}) or the suite's judge: key")
            return self.default_judge
        if isinstance(value, str):
            if value in [b.label for b in self.backends] or value in self.judges:
                if value not in self.judges:
                    self.judges[value] = next(b for b in self.backends if b.label == value)
                return value
            raise ConfigError(f"{where}: no backend is labelled '{value}'; labels: "
                              f"{', '.join(b.label for b in self.backends)}")
        loc, sub = (self.loc, key) if key is not None else (Locator(where), ())
        spec = self._backend(value, loc, sub)
        spec.label = f"judge {spec.label}" if "label" not in value else spec.label
        for existing in self.judges.values():
            if existing.identity == spec.identity and existing.concurrency == spec.concurrency:
                return existing.label
        while spec.label in self.judges or spec.label in [b.label for b in self.backends]:
            spec.label += "'"
        self.judges[spec.label] = spec
        return spec.label

    def _cases(self) -> list[Case]:
        data, loc = self.data, self.loc
        default = data.get("defaultTest") or {}
        if not isinstance(default, Mapping) or set(default) - {"vars", "assert"}:
            raise loc.error(("defaultTest",), "a mapping with vars and assert")
        default_vars = self._vars(default.get("vars"), loc(("defaultTest", "vars")))
        default_asserts = self._assertions(default.get("assert"), lambda i: loc(("defaultTest", "assert", i)),
                                           loc(("defaultTest", "assert")), lambda i: ("defaultTest", "assert", i))
        raw_cases: list[tuple[RawCase, Any]] = []  # (case, yaml key or None for files)
        tests = data.get("tests")
        if isinstance(tests, str):
            tests = [tests]
        if tests is not None and not isinstance(tests, list):
            raise loc.error(("tests",), "a list of test cases, or a cases file (.jsonl or .csv)")
        for i, item in enumerate(tests or []):
            if isinstance(item, str):
                raw_cases += [(c, None) for c in read_cases(self._file(item), loc(("tests", i)))]
            else:
                raw_cases.append((RawCase(item, loc.at(("tests", i))), ("tests", i)))
        files = data.get("cases")
        files = [files] if isinstance(files, str) else files
        if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            raise loc.error(("cases",), "a cases file (.jsonl or .csv) or a list of them")
        for i, name in enumerate(files or []):
            key = ("cases", i) if isinstance(data["cases"], list) else ("cases",)
            raw_cases += [(c, None) for c in read_cases(self._file(name), loc(key))]
        if not raw_cases:
            raise loc.error(("tests",), "no test cases: give tests: [...] or cases: FILE.jsonl")
        cases = []
        for index, (raw, key) in enumerate(raw_cases):
            cases.append(self._case(index, raw, key, default_vars, default_asserts))
        return cases

    def _file(self, name: str) -> Path:
        name = name[len("file://"):] if name.startswith("file://") else name
        path = Path(name)
        return path if path.is_absolute() else self.base_dir / path

    def _case(self, index: int, raw: RawCase, key: Key | None, default_vars: Mapping[str, Any],
              default_asserts: tuple[Assertion, ...]) -> Case:
        loc = self.loc
        data = raw.data

        def at(*sub: str | int) -> str:
            return loc((*key, *sub)) if key is not None else (f"{raw.where}: " + ".".join(map(str, sub))
                                                              if sub else raw.where)

        if not isinstance(data, Mapping):
            raise ConfigError(f"{at()}: a test case is a mapping with vars and assert")
        unknown = sorted(set(data) - CASE_KEYS)
        if unknown:
            raise ConfigError(f"{at(unknown[0])}: unknown test case key; allowed: {', '.join(sorted(CASE_KEYS))}")
        variables = {**default_vars, **self._vars(data.get("vars"), at("vars"))}
        asserts = self._assertions(data.get("assert"), lambda i: at("assert", i), at("assert"),
                                   (lambda i: (*key, "assert", i)) if key is not None else None)
        description = data.get("description")
        return Case(index, raw.where, variables, default_asserts + asserts,
                    None if description is None else str(description))

    @staticmethod
    def _vars(raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: vars are a mapping of names to values")
        return {str(k): v for k, v in raw.items()}

    def _assertions(self, raw: Any, where_of: Any, where: str, key_of: Any) -> tuple[Assertion, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: a list of assertions")
        out = []
        for i, item in enumerate(raw):
            key = key_of(i) if key_of is not None else None

            def judge(value: Any, at: str, key: Key | None = key) -> str:
                return self._judge_label(value, at, (*key, "backend") if key is not None and isinstance(
                    value, Mapping) else None)

            out.append(parse_assertion(item, where_of(i), judge))
        return tuple(out)


def _unique_labels(prompts: list[Prompt]) -> None:
    seen: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        if prompt.label in seen:
            raise ConfigError(f"{prompt.where}: two prompts are labelled '{prompt.label}' (the other is "
                              f"prompts[{seen[prompt.label]}]); give one a label")
        seen[prompt.label] = i


def _model_files(model: Any) -> dict[str, Any]:
    """A local model folder's files (name, size, modification time) as part of its replies' cache
    key: retrained weights at the same path are asked again."""
    if not isinstance(model, str):
        return {}
    folder = Path(model)
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return {"model_files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
