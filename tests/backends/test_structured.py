"""Structured output on local backends: constrained decoding against a JSON schema.

Tiny random models (torch, hf, jax on the same saved checkpoint; a byte and a bpe tokenizer)
sampled at temperature 1 over many seeds: every reply parses into the schema on the first try
(no retries), also with max_tokens at the schema's shortest JSON. The validator is checked on
valid and invalid prefixes; `rung prompt --schema` prints valid JSON from a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from rung.decoding.structured import JsonSchema, SchemaError, token_bytes
from rung.errors import RungError
from rung.interfaces import BaseBackend
from rung.records import Completion, GenerationRequest


class Address(BaseModel):
    city: Literal["Oslo", "Lima", "Köln"]
    street: str = Field(max_length=8)


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int
    tags: list[str] = Field(max_length=3)
    address: Address
    nickname: Optional[str] = None


class Reading(BaseModel):
    value: float
    valid: bool
    error: Optional[float]
    samples: list[int] = Field(min_length=1, max_length=4)


LOOSE = {  # a plain JSON schema: enums of mixed types, anyOf, an array of either, a map
    "type": "object",
    "properties": {
        "kind": {"enum": ["a", "b", 3, None]},
        "values": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
                   "maxItems": 3},
        "ok": {"type": "boolean"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2},
    },
    "required": ["kind", "values", "ok", "counts"],
}
SCHEMAS = (Person, Reading, LOOSE)
WORDS = "name age city street tags value valid error samples kind values ok counts Oslo Lima true false null".split()


def _corpus() -> list[str]:
    import random

    rng = random.Random(0)
    return [json.dumps({rng.choice(WORDS): rng.choice(WORDS + [1, 2.5, None])}) + " " + " ".join(
        rng.choice(WORDS) for _ in range(6)) for _ in range(300)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint per tokenizer (byte; bpe learnt from JSON-ish text)."""
    import rung

    out = {}
    for kind in ("byte", "bpe"):
        tokenizer = rung.tokenizer(kind) if kind == "byte" else rung.tokenizer("bpe", vocab_size=400, min_frequency=1)
        if kind == "bpe":
            tokenizer.train(_corpus())
        backend = rung.backend("torch", model="test", tokenizer=tokenizer, device="cpu", seed=3,
                               architecture={"init_std": 0.3, "max_seq_len": 256})
        out[kind] = tmp_path_factory.mktemp(f"structured-{kind}")
        backend.save(out[kind])
    return out


_backends: dict = {}


def _backend(name: str, folder: Path):
    import rung

    key = (name, str(folder))
    if key not in _backends:
        _backends[key] = rung.backend(name, model=str(folder), **({} if name == "jax" else {"device": "cpu"}))
    return _backends[key]


def _parses(schema, text: str):
    compiled = JsonSchema.of(schema)
    assert compiled.is_complete(text), text
    return compiled.parse(text)


# torch samples many seeds of every schema; hf and jax (slower steps, jax compiles) check that
# their hooks apply the same mask on fewer. jax runs the bpe model: one compilation.
CASES = [("torch", "byte", 8, SCHEMAS), ("torch", "bpe", 8, SCHEMAS), ("hf", "byte", 2, (Person, LOOSE)),
         ("hf", "bpe", 2, (Reading, LOOSE)), ("jax", "bpe", 2, SCHEMAS)]


@pytest.mark.parametrize("name,kind,seeds,schemas", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sampled_replies_always_parse(folders, name, kind, seeds, schemas):
    backend = _backend(name, folders[kind])
    for schema in schemas:
        requests = [GenerationRequest(prompt="JSON:", max_tokens=100, temperature=1.0, seed=seed, constraint=schema)
                    for seed in range(seeds)]
        requests.append(GenerationRequest(prompt="JSON:", max_tokens=100, constraint=schema))  # greedy
        completions = backend.generate_batch(requests)
        texts = [c.text for c in completions]
        for completion in completions:
            _parses(schema, completion.text)
            assert completion.usage.completion_tokens <= 100
        assert len(set(texts)) > 1  # sampled, not one fixed answer
    streamed = "".join(d.text for d in backend.stream(
        GenerationRequest(prompt="JSON:", max_tokens=100, temperature=1.0, seed=11, constraint=schemas[-1])))
    _parses(schemas[-1], streamed)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_the_shortest_budget_still_closes(folders, kind):
    backend = _backend("torch", folders[kind])
    for schema in SCHEMAS:
        shortest = JsonSchema.of(schema).shortest
        for seed in range(4):
            completion = backend.generate(GenerationRequest(prompt="JSON:", max_tokens=shortest, temperature=1.0,
                                                            seed=seed, constraint=schema))
            _parses(schema, completion.text)
        with pytest.raises(RungError, match="too few for the shortest JSON"):
            backend.generate(GenerationRequest(prompt="JSON:", max_tokens=shortest - 1, constraint=schema))


def test_generate_structured_gives_instances_and_values(folders):
    backend = _backend("torch", folders["bpe"])
    assert backend.capabilities.structured_output
    person = backend.generate_structured(GenerationRequest(prompt="Who?", max_tokens=80, seed=1, temperature=1.0),
                                         Person)
    assert isinstance(person, Person) and len(person.name) <= 12
    value = backend.generate_structured(GenerationRequest(prompt="Loose:", max_tokens=80), LOOSE)
    assert value["kind"] in ("a", "b", 3, None) and isinstance(value["ok"], bool) and len(value["counts"]) <= 2


class _Scripted(BaseBackend):
    """A backend that ignores constraints and answers from a script: the validated retries."""

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.seen = list(replies), []

    def generate(self, request: GenerationRequest) -> Completion:
        self.seen.append(request)
        return Completion(self.replies.pop(0), "stop")


def test_a_backend_that_cannot_constrain_gets_validated_retries():
    good = Reading(value=1.5, valid=True, error=None, samples=[3])
    backend = _Scripted(["not json", '{"value": 1}', good.model_dump_json()])
    assert backend.generate_structured(GenerationRequest(prompt="x"), Reading) == good
    assert len({r.seed for r in backend.seen}) == 3 and backend.seen[1].temperature == 1.0
    with pytest.raises(RungError, match=r"scripted: no reply parsed into Reading in 3 attempts"):
        _Scripted(["{}", "[]", "null"]).generate_structured(GenerationRequest(prompt="x"), Reading)


def test_validator_prefixes():
    schema = JsonSchema.of(Person)
    text = Person(name='Ad"a\\é', age=-37, tags=["x", "ü"], address=Address(city="Köln", street="a b"),
                  nickname=None).model_dump_json()
    assert schema.is_complete(text)
    raw = text.encode("utf-8")
    validator = schema.validator()
    for i, b in enumerate(raw):  # every byte prefix, half characters included, is a valid prefix
        assert validator.feed(bytes([b])), raw[:i + 1]
    assert validator.complete and validator.closing_bytes == 0
    for bad in ['{ "name"', '{"age":1', '{"name":1', '{"name":"a","age":01', '{"name":"a","age":1.5',
                '{"name":"abcdefghijklm"', '{"name":"a","age":1,"tags":["a","b","c","d"]',
                '{"name":"a","age":1,"tags":[],"address":{"city":"Bergen"', '{"name":"\\x"',
                '{"name":"\\ud800"', '{"name":"\n"', '{"name":"a","age":-', '{"name":"a","age":1,"extra"']:
        assert not schema.is_prefix(bad) or not schema.is_prefix(bad + '"'), bad
        assert not schema.is_complete(bad)
    for good in ['', '{', '{"na', '{"name":"a\\u00e9', '{"name":"a","age":-1', '{"name":"a","age":1,"tags":[]']:
        assert schema.is_prefix(good), good
    # The optional property may be left out; the required ones may not.
    assert schema.is_complete('{"name":"","age":0,"tags":[],"address":{"city":"Oslo","street":""}}')
    assert not schema.is_complete('{"name":"","age":0,"tags":[]}')
    reading = JsonSchema.of(Reading)
    for number in ["0", "-0.5", "12e3", "1.25E-2", "3"]:
        assert reading.is_complete(f'{{"value":{number},"valid":true,"error":null,"samples":[1]}}'), number
    assert not reading.is_prefix('{"value":1,"valid":true,"error":null,"samples":[]')  # minItems 1
    assert not reading.is_prefix('{"value":.5')
    validator = reading.validator()
    validator.feed('{"value":1')
    assert validator.accepts(".5") and validator.accepts(",")
    assert not validator.accepts("}") and not validator.accepts(" ")


def test_schema_errors_are_one_line():
    with pytest.raises(SchemaError, match=r"schema \$.properties.x: keyword 'if' is not supported"):
        JsonSchema.of({"type": "object", "properties": {"x": {"type": "string", "if": {}}}})
    with pytest.raises(SchemaError, match="recursive"):
        JsonSchema.of({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
                       "$ref": "#/$defs/n"})
    with pytest.raises(SchemaError, match="allows any value"):
        JsonSchema.of({"type": "object", "properties": {"x": {}}})


def test_token_bytes_spell_what_decode_gives(folders):
    import random

    from rung.saved_tokenizer import load_saved_tokenizer

    for kind, folder in folders.items():
        for tokenizer in (load_saved_tokenizer(folder, "torch"), _backend("hf", folder).tokenizer):
            spelled = token_bytes(tokenizer)
            usable = [i for i, b in enumerate(spelled) if b]
            assert len(usable) >= 256  # every byte, the half characters included
            rng = random.Random(0)
            for _ in range(50):
                ids = [rng.choice(usable) for _ in range(rng.randint(1, 12))]
                assert b"".join(spelled[i] for i in ids).decode("utf-8", "replace") == tokenizer.decode(ids), kind


def test_rung_prompt_schema_prints_valid_json(folders, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rung.cli.main import cli

    schema_file = tmp_path / "reading.json"
    schema_file.write_text(json.dumps(Reading.model_json_schema()))
    base = ["prompt", "-b", "torch", "-m", str(folders["bpe"]), "--max-tokens", "60", "--no-log"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RUNG_CONFIG_DIR": str(tmp_path / "config")}
    done = subprocess.run([sys.executable, "-m", "rung.cli.main", *base, "--schema", str(schema_file), "Measure it"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    Reading.model_validate_json(done.stdout.strip())
    # A pydantic model by MODULE:MODEL, and a schema the constraint cannot follow: in process.
    (tmp_path / "people.py").write_text("from pydantic import BaseModel\n\n\nclass Pet(BaseModel):\n"
                                        "    name: str\n    legs: int\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNG_CONFIG_DIR", str(tmp_path / "config"))
    result = CliRunner().invoke(cli, [*base, "--schema", "people.py:Pet", "A pet"])
    assert result.exit_code == 0, result.output
    pet = json.loads(result.stdout)
    assert set(pet) == {"name", "legs"} and isinstance(pet["legs"], int)
    schema_file.write_text('{"type": "string", "pattern": "^a", "if": {}}')
    result = CliRunner().invoke(cli, [*base, "--schema", str(schema_file), "x"])
    # A RungError: `rung`'s main prints it as one line and exits non-zero.
    assert isinstance(result.exception, SchemaError) and "keyword 'if' is not supported" in str(result.exception)
