"""`JsonSchema`: a schema compiled once (cached by model or dict) and what it answers of text
(`JsonValidator`, `parse`) and of a tokenizer (`for_tokenizer`, `bind`)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any

from rung.errors import RungError
from rung.decoding.structured.automaton import _DEAD, _Automaton
from rung.decoding.structured.guide import TokenConstraint
from rung.decoding.structured.nodes import SchemaError, _Compiler, _dump
from rung.decoding.structured.vocabulary import vocabulary


class JsonSchema:
    """A JSON schema compiled for constrained decoding (see the module docstring).

    Build one with `JsonSchema.of(schema)`: a pydantic model class, a schema dict, or a
    JsonSchema (returned as is); the same model or schema gives the same object, so its
    caches (states, per-tokenizer masks) serve every request.
    """

    def __init__(self, schema: Mapping[str, Any], model: type | None = None) -> None:
        if not isinstance(schema, Mapping):
            raise SchemaError(f"a JSON schema must be an object (a dict), got {type(schema).__name__}")
        self.schema = dict(schema)
        self.model = model
        compiler = _Compiler(self.schema)
        self.root = compiler.node(self.schema, "$")
        self.checked_after = frozenset(compiler.checked_after)
        self.automaton = _Automaton(self.root)
        self._tokenizers: dict[int, tuple[Any, TokenConstraint]] = {}
        self._lock = threading.Lock()

    _cache: dict[Any, JsonSchema] = {}

    @classmethod
    def of(cls, schema: Any) -> JsonSchema:
        """The compiled schema of a pydantic model class, a schema dict, or a JsonSchema."""
        if isinstance(schema, JsonSchema):
            return schema
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            key: Any = schema
            if key not in cls._cache:
                cls._cache[key] = cls(schema.model_json_schema(), model=schema)
            return cls._cache[key]
        if isinstance(schema, Mapping):
            key = json.dumps(schema, sort_keys=True, default=str)
            if key not in cls._cache:
                if len(cls._cache) > 256:
                    cls._cache.clear()
                cls._cache[key] = cls(schema)
            return cls._cache[key]
        raise SchemaError(f"a schema is a pydantic model class or a JSON schema dict, got {type(schema).__name__}")

    @property
    def name(self) -> str:
        return self.model.__name__ if self.model is not None else str(self.schema.get("title") or "the schema")

    @property
    def shortest(self) -> int:
        """Bytes of the shortest JSON the schema allows."""
        return self.root.minlen()

    # -- text: the validator

    def validator(self) -> JsonValidator:
        """An incremental validator at the start of the JSON."""
        return JsonValidator(self)

    def is_prefix(self, text: str) -> bool:
        """Whether `text` can be continued into JSON of this schema (or is one already)."""
        return self.automaton.feed(self.automaton.start, text.encode("utf-8")) != _DEAD

    def is_complete(self, text: str) -> bool:
        """Whether `text` is compact JSON of this schema, as the constraint writes it."""
        sid = self.automaton.feed(self.automaton.start, text.encode("utf-8"))
        return sid != _DEAD and self.automaton.complete[sid]

    def parse(self, text: str) -> Any:
        """The reply as a model instance (pydantic validates it) or a JSON value; a ValueError
        (pydantic's ValidationError is one) saying why when it does not fit."""
        if self.model is not None:
            return self.model.model_validate_json(text)
        value = json.loads(text)
        compact = _dump(value).decode("utf-8")
        if not self.is_complete(compact) and not self.is_complete(text.strip()):
            raise ValueError(f"the reply does not fit {self.name}: {text[:80]!r}")
        _check_values(value, self.schema, self.schema, "$")
        return value

    # -- tokens

    def for_tokenizer(self, tokenizer: Any) -> TokenConstraint:
        """This schema against `tokenizer`'s vocabulary (built once per tokenizer)."""
        entry = self._tokenizers.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            with self._lock:
                entry = self._tokenizers.get(id(tokenizer))
                if entry is None or entry[0] is not tokenizer:
                    entry = self._tokenizers[id(tokenizer)] = (tokenizer, TokenConstraint(self, vocabulary(tokenizer)))
        return entry[1]

    def __repr__(self) -> str:
        return f"JsonSchema({self.name})"


class JsonValidator:
    """Text in, piece by piece: whether it still fits the schema, and whether it is complete."""

    def __init__(self, schema: JsonSchema) -> None:
        self.automaton = schema.automaton
        self.state = self.automaton.start

    @property
    def valid(self) -> bool:
        return self.state != _DEAD

    @property
    def complete(self) -> bool:
        return self.state != _DEAD and self.automaton.complete[self.state]

    @property
    def closing_bytes(self) -> int:
        """The fewest bytes that finish the JSON from here."""
        return self.automaton.costs[self.state] if self.valid else 0

    def accepts(self, continuation: str | bytes) -> bool:
        """Whether the text so far followed by `continuation` still fits."""
        data = continuation.encode("utf-8") if isinstance(continuation, str) else continuation
        return self.automaton.feed(self.state, data) != _DEAD

    def feed(self, piece: str | bytes) -> bool:
        """Take `piece`; return whether the text still fits."""
        data = piece.encode("utf-8") if isinstance(piece, str) else piece
        self.state = self.automaton.feed(self.state, data)
        return self.valid


def _check_values(value: Any, schema: Any, root: Mapping[str, Any], path: str) -> None:
    """The value rules the grammar does not follow (`_CHECKED_AFTER`), for a dict schema."""
    if not isinstance(schema, Mapping):
        return
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return _check_values(value, target, root, path)
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            errors = []
            for option in schema[keyword]:
                try:
                    return _check_values(value, option, root, path)
                except ValueError as exc:
                    errors.append(str(exc))
            raise ValueError(errors[0])
    for part in schema.get("allOf", ()):
        _check_values(value, part, root, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for keyword, fails in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                               ("exclusiveMinimum", lambda v, b: v <= b), ("exclusiveMaximum", lambda v, b: v >= b),
                               ("multipleOf", lambda v, b: (v / b) != int(v / b))):
            if keyword in schema and fails(value, schema[keyword]):
                raise ValueError(f"{path}: {value} fails {keyword} {schema[keyword]}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        raise ValueError(f"{path}: {value!r} does not match pattern {schema['pattern']!r}")
    if isinstance(value, list):
        if schema.get("uniqueItems") and len({_dump(v) for v in value}) < len(value):
            raise ValueError(f"{path}: items are not unique")
        for i, item in enumerate(value):
            _check_values(item, schema.get("items"), root, f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, item in value.items():
            _check_values(item, properties.get(key, schema.get("additionalProperties")), root, f"{path}.{key}")


def bind(constraint: Any, tokenizer: Any, max_tokens: int) -> TokenConstraint:
    """A request's `constraint` (a JsonSchema, pydantic model or schema dict) against the
    tokenizer (the Sampling's `constraint`); `max_tokens` must hold the schema's shortest JSON
    one byte a token (what the length guarantee counts on)."""
    bound = constraint if isinstance(constraint, TokenConstraint) else \
        JsonSchema.of(constraint).for_tokenizer(tokenizer)
    if max_tokens < bound.shortest:
        raise RungError(f"max_tokens ({max_tokens}) is too few for the shortest JSON of {bound.schema.name} "
                        f"({bound.shortest} bytes, counted one token each so the reply always closes); "
                        "raise max_tokens")
    return bound
