"""A JSON schema compiled into nodes (`_Compiler`): what the automaton reads, each node
knowing the bytes of its shortest JSON; a keyword constrained decoding cannot follow is a
`SchemaError` naming it and where it is."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rung.errors import RungError


class SchemaError(RungError):
    """A schema that cannot be decoded to: one line saying which keyword and where."""

class _Node:
    """A compiled schema. Subclasses hold what the automaton reads; identity is equality."""

    __slots__ = ("_minlen",)

    def minlen(self) -> int:
        """Bytes of this value's shortest JSON."""
        cached = getattr(self, "_minlen", None)
        if cached is None:
            cached = self._minlen = self._shortest()
        return cached

    def _shortest(self) -> int:
        raise NotImplementedError


class _Literal(_Node):
    __slots__ = ("values",)

    def __init__(self, values: Sequence[bytes]) -> None:
        self.values = tuple(dict.fromkeys(values))

    def _shortest(self) -> int:
        return min(len(v) for v in self.values)


class _String(_Node):
    __slots__ = ("min_length", "max_length")

    def __init__(self, min_length: int = 0, max_length: int | None = None) -> None:
        self.min_length, self.max_length = min_length, max_length

    def _shortest(self) -> int:
        return 2 + self.min_length


class _Number(_Node):
    __slots__ = ("integer",)

    def __init__(self, integer: bool) -> None:
        self.integer = integer

    def _shortest(self) -> int:
        return 1


class _Object(_Node):
    __slots__ = ("names", "keys", "values", "required", "_after")

    def __init__(self, names: Sequence[str], values: Sequence[_Node], required: Sequence[bool]) -> None:
        self.names = tuple(names)
        self.keys = tuple(_dump(n) + b":" for n in names)  # '"name":'
        self.values, self.required = tuple(values), tuple(required)
        self._after: list[int] | None = None

    def candidates(self, index: int) -> tuple[int, ...]:
        """The properties that may come next from `index`: up to the first required one."""
        out = []
        for i in range(index, len(self.names)):
            out.append(i)
            if self.required[i]:
                break
        return tuple(out)

    def closes_from(self, index: int) -> bool:
        """Whether '}' may come with properties `index`.. not written."""
        return not any(self.required[index:])

    def after_cost(self, index: int) -> int:
        """Bytes that close the object after a value, properties `index`.. still to come."""
        if self._after is None:
            after, total = [0] * (len(self.names) + 1), 1
            after[-1] = 1
            for i in range(len(self.names) - 1, -1, -1):
                if self.required[i]:
                    total += 1 + len(self.keys[i]) + self.values[i].minlen()
                after[i] = total
            self._after = after
        return self._after[index]

    def key_cost(self, index: int) -> int:
        """Bytes that close the object when a key must come next (after '{' or ',')."""
        return min(len(self.keys[i]) + self.values[i].minlen() + self.after_cost(i + 1)
                   for i in self.candidates(index))

    def start_cost(self) -> int:
        """Bytes that close the object right after '{'."""
        if not self.names or self.closes_from(0):
            return 1
        return self.key_cost(0)

    def _shortest(self) -> int:
        return 1 + self.start_cost()


class _Array(_Node):
    __slots__ = ("items", "min_items", "max_items")

    def __init__(self, items: _Node, min_items: int = 0, max_items: int | None = None) -> None:
        self.items, self.min_items, self.max_items = items, min_items, max_items

    def after_cost(self, count: int) -> int:
        return max(0, self.min_items - count) * (1 + self.items.minlen()) + 1

    def start_cost(self) -> int:
        return 1 if self.min_items == 0 else self.items.minlen() + self.after_cost(1)

    def _shortest(self) -> int:
        return 1 + self.start_cost()


class _Map(_Node):
    """An object of any keys (strings) whose values all follow one schema."""

    __slots__ = ("key", "values", "min_items", "max_items")

    def __init__(self, values: _Node, min_items: int = 0, max_items: int | None = None) -> None:
        self.key, self.values = _String(), values
        self.min_items, self.max_items = min_items, max_items

    def entry_cost(self) -> int:
        return 3 + self.values.minlen()  # '"":' and the value

    def after_cost(self, count: int) -> int:
        return max(0, self.min_items - count) * (1 + self.entry_cost()) + 1

    def _shortest(self) -> int:
        return 1 + (1 if self.min_items == 0 else self.entry_cost() + self.after_cost(1))


class _AnyOf(_Node):
    __slots__ = ("options",)

    def __init__(self, options: Sequence[_Node]) -> None:
        flat: list[_Node] = []
        for option in options:
            flat.extend(option.options if isinstance(option, _AnyOf) else (option,))
        self.options = tuple(flat)

    def _shortest(self) -> int:
        return min(o.minlen() for o in self.options)


def _dump(value: Any) -> bytes:
    """A JSON value as rung writes it: compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ----------------------------------------------------------------------------- the compiler

_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "readOnly", "writeOnly",
    "deprecated", "$defs", "definitions", "discriminator", "additionalProperties",
})
# Value rules a grammar does not follow: checked after decoding (pydantic, or `_check_values`).
_CHECKED_AFTER = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "pattern", "format", "uniqueItems",
})
_STRUCTURE = frozenset({
    "type", "properties", "required", "items", "minItems", "maxItems", "minLength", "maxLength", "enum", "const",
    "anyOf", "oneOf", "allOf", "$ref", "minProperties", "maxProperties",
})
MAX_INTEGER_DIGITS = 15  # a number's digits before the point (a small model must not write forever)
MAX_FRACTION_DIGITS = 15
MAX_EXPONENT_DIGITS = 2


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.checked_after: set[str] = set()
        self._refs: dict[str, _Node] = {}
        self._resolving: list[str] = []

    def node(self, schema: Any, path: str) -> _Node:
        if schema is True or schema == {}:
            raise SchemaError(f"schema {path}: allows any value, which constrained decoding cannot write; give it "
                              "a type")
        if not isinstance(schema, Mapping):
            raise SchemaError(f"schema {path}: expected an object, got {type(schema).__name__}")
        if "$ref" in schema:
            return self._ref(schema["$ref"], path)
        for keyword in schema:
            if keyword in _CHECKED_AFTER:
                self.checked_after.add(keyword)
            elif keyword not in _ANNOTATIONS and keyword not in _STRUCTURE:
                raise SchemaError(f"schema {path}: keyword '{keyword}' is not supported by constrained decoding")
        if "const" in schema:
            return _Literal([_dump(schema["const"])])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"schema {path}.enum: expected a non-empty list")
            return _Literal([_dump(v) for v in values])
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                options = schema[keyword]
                if not isinstance(options, list) or not options:
                    raise SchemaError(f"schema {path}.{keyword}: expected a non-empty list")
                return _AnyOf([self.node(o, f"{path}.{keyword}[{i}]") for i, o in enumerate(options)])
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise SchemaError(f"schema {path}.allOf: only an allOf of one schema is supported")
            return self.node(parts[0], f"{path}.allOf[0]")
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise SchemaError(f"schema {path}.type: an empty list allows nothing")
            return _AnyOf([self.node({**schema, "type": k}, path) for k in kind])
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind == "object":
            return self._object(schema, path)
        if kind == "array":
            if "items" not in schema:
                raise SchemaError(f"schema {path}: an array needs 'items' (a schema for its elements)")
            low, high = _bounds(schema, "minItems", "maxItems", path)
            return _Array(self.node(schema["items"], f"{path}.items"), low, high)
        if kind == "string":
            low, high = _bounds(schema, "minLength", "maxLength", path)
            return _String(low, high)
        if kind in ("integer", "number"):
            return _Number(kind == "integer")
        if kind == "boolean":
            return _Literal([b"true", b"false"])
        if kind == "null":
            return _Literal([b"null"])
        raise SchemaError(f"schema {path}: type {kind!r} is not one of object, array, string, integer, number, "
                          "boolean, null")

    def _object(self, schema: Mapping[str, Any], path: str) -> _Node:
        properties = schema.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise SchemaError(f"schema {path}.properties: expected an object")
        required = schema.get("required") or []
        unknown = [name for name in required if name not in properties]
        if unknown:
            raise SchemaError(f"schema {path}.required: '{unknown[0]}' is not among the properties")
        extra = schema.get("additionalProperties")
        if not properties and isinstance(extra, Mapping):
            low, high = _bounds(schema, "minProperties", "maxProperties", path)
            return _Map(self.node(extra, f"{path}.additionalProperties"), low, high)
        names = list(properties)
        values = [self.node(properties[n], f"{path}.properties.{n}") for n in names]
        return _Object(names, values, [n in required for n in names])

    def _ref(self, ref: Any, path: str) -> _Node:
        if ref in self._refs:
            return self._refs[ref]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError(f"schema {path}.$ref: only references into this schema ('#/$defs/...') are supported")
        if ref in self._resolving:
            raise SchemaError(f"schema {path}.$ref: '{ref}' refers to itself; recursive schemas are not supported")
        target: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise SchemaError(f"schema {path}.$ref: '{ref}' is not in the schema")
            target = target[part]
        self._resolving.append(ref)
        try:
            node = self._refs[ref] = self.node(target, ref[1:].replace("/", "."))
        finally:
            self._resolving.pop()
        return node


def _bounds(schema: Mapping[str, Any], low_key: str, high_key: str, path: str) -> tuple[int, int | None]:
    low, high = schema.get(low_key, 0), schema.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise SchemaError(f"schema {path}.{key}: expected a whole number >= 0, got {value!r}")
    if high is not None and high < low:
        raise SchemaError(f"schema {path}: {high_key} ({high}) is below {low_key} ({low})")
    return low, high
