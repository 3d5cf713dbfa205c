"""Constrained decoding to JSON that fits a JSON schema, for the local backends.

Three layers, each usable alone:

- `JsonSchema`: a JSON schema (a dict, or a pydantic model's `model_json_schema()`) compiled
  into an incremental validator of compact JSON. It works on bytes (UTF-8), so a token that
  holds half a character (byte-level BPE) is judged exactly: `is_prefix(text)`,
  `is_complete(text)`, and `validator()` (feed text piece by piece, ask whether a
  continuation fits). `parse(text)` turns a finished reply into the model instance (pydantic
  validates it) or the JSON value.
- `TokenConstraint` (`JsonSchema.for_tokenizer(tokenizer)`): the schema against one
  vocabulary. Every token's bytes are worked out once (`token_bytes`) and put in a trie; the
  tokens allowed in a validator state are found by walking the trie with the validator
  (pruning every subtree whose prefix is already invalid) once per state and cached, so a
  long string or a repeated structure costs a dictionary lookup per step. `guide()` gives a
  row's `TokenGuide`: `allowed()` ids before each step, `advance(token)` after.
- `generate_structured(backend, request, schema)`: what `BaseBackend.generate_structured`
  does: the request decoded under the constraint (a local backend applies
  `GenerationRequest.constraint` at every step), the reply parsed and validated, and a few
  validated retries (other seeds) when it does not parse (a backend that cannot constrain).

The JSON written is deterministic in form: compact (no whitespace outside strings), object
properties in the schema's order (optional ones may be left out, others never added:
`additionalProperties` is not needed), strings with the simple escapes or ``\\uXXXX`` (no
lone surrogates). The supported schema: ``type`` object (``properties``, ``required``; or
``additionalProperties`` as a schema: a map), array (``items``, ``minItems``, ``maxItems``),
string (``minLength``, ``maxLength``), integer, number, boolean, null; ``enum``, ``const``,
``anyOf``/``oneOf``, a ``type`` list, ``$ref`` into ``$defs`` (not recursive), ``allOf`` of
one schema. Keywords that restrict values in ways a grammar does not follow (``minimum``,
``pattern``, ``format``...) are checked after decoding (pydantic does it for a model); any
other keyword is an error naming it and where it is.

Length: a `TokenGuide` knows the fewest bytes that close the JSON from each state. Near the end
of `max_tokens` it allows only tokens after which the rest still fits, one byte a token, so
the reply is complete JSON within the budget whenever the vocabulary has a token for every
byte the closing needs (`TokenConstraint.byte_complete`: true of byte-level BPE and byte
tokenizers). A `max_tokens` below the schema's shortest JSON is refused up front. When the
JSON is complete only a stop id (eos, end of turn) is allowed; a tokenizer without one ends
the row there.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from rung.byte_level import bytes_to_unicode
from rung.errors import RungError


class SchemaError(RungError):
    """A schema that cannot be decoded to: one line saying which keyword and where."""


# ----------------------------------------------------------------------------- schema nodes


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


# ----------------------------------------------------------------------------- the automaton
#
# A configuration is a stack (tuple) of frames, the innermost last; a state is the frozenset
# of configurations the bytes so far may be in (a number may have ended or go on; an anyOf
# follows each option). The empty configuration is the finished value. Parents sit in the
# phase they return to when the child on top of them is done.

_VALUE, _LITERAL, _KEY, _STRING, _NUMBER, _OBJECT, _ARRAY, _MAP = range(8)
_START, _AFTER, _NEXT, _COLON = range(4)
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_DEAD = -1


def _start(node: _Node, b: int, rest: tuple) -> list[tuple]:
    """Configurations after byte `b` begins a value of `node` above `rest`."""
    if isinstance(node, _AnyOf):
        out: list[tuple] = []
        for option in node.options:
            out += _start(option, b, rest)
        return out
    if isinstance(node, _Literal):
        return _literal_step(node.values, 0, b, rest, lambda longer, pos: (_LITERAL, longer, pos))
    if isinstance(node, _String):
        return [rest + ((_STRING, node, 0, 0),)] if b == 0x22 else []
    if isinstance(node, _Number):
        if b == 0x2D:  # '-'
            return [rest + ((_NUMBER, node, 0, 0),)]
        if b == 0x30:  # '0': the integer part is done
            return [rest] if node.integer else [rest + ((_NUMBER, node, 1, 1),), rest]
        if b in _DIGITS:
            return [rest + ((_NUMBER, node, 2, 1),), rest]
        return []
    if isinstance(node, _Object):
        return [rest + ((_OBJECT, node, 0, _START),)] if b == 0x7B else []
    if isinstance(node, _Array):
        return [rest + ((_ARRAY, node, 0, _START),)] if b == 0x5B else []
    if isinstance(node, _Map):
        return [rest + ((_MAP, node, 0, _START),)] if b == 0x7B else []
    raise TypeError(node)


def _literal_step(values: tuple[bytes, ...], pos: int, b: int, rest: tuple, frame) -> list[tuple]:
    matched = [v for v in values if v[pos] == b]
    out = [rest] if any(len(v) == pos + 1 for v in matched) else []
    longer = tuple(v for v in matched if len(v) > pos + 1)
    if longer:
        out.append(rest + (frame(longer, pos + 1),))
    return out


def _step(config: tuple, b: int) -> list[tuple]:
    """Configurations after byte `b` in `config` (none: `b` does not fit)."""
    frame, rest = config[-1], config[:-1]
    tag = frame[0]
    if tag == _STRING:
        return _string_step(frame, b, rest)
    if tag == _VALUE:
        return _start(frame[1], b, rest)
    if tag == _LITERAL:
        return _literal_step(frame[1], frame[2], b, rest, lambda longer, pos: (_LITERAL, longer, pos))
    if tag == _NUMBER:
        return _number_step(frame, b, rest)
    if tag == _KEY:
        _, node, candidates, pos = frame
        out = []
        longer = []
        for i in candidates:
            key = node.keys[i]
            if key[pos] != b:
                continue
            if len(key) == pos + 1:
                out.append(rest + ((_OBJECT, node, i + 1, _AFTER), (_VALUE, node.values[i])))
            else:
                longer.append(i)
        if longer:
            out.append(rest + ((_KEY, node, tuple(longer), pos + 1),))
        return out
    if tag == _OBJECT:
        _, node, index, phase = frame
        if phase == _AFTER:
            if b == 0x2C and index < len(node.names):
                return [rest + ((_OBJECT, node, index, _NEXT),)]
            return [rest] if b == 0x7D and node.closes_from(index) else []
        if b == 0x22 and index < len(node.names):  # a key (after '{' or ',')
            return [rest + ((_KEY, node, node.candidates(index), 1),)]
        return [rest] if b == 0x7D and phase == _START and node.closes_from(0) else []
    if tag == _ARRAY:
        _, node, count, phase = frame
        if phase == _AFTER:
            if b == 0x2C and (node.max_items is None or count < node.max_items):
                return [rest + ((_ARRAY, node, count, _NEXT),)]
            return [rest] if b == 0x5D and count >= node.min_items else []
        if phase == _START and b == 0x5D:
            return [rest] if node.min_items == 0 else []
        if phase == _START and node.max_items == 0:
            return []
        return _start(node.items, b, rest + ((_ARRAY, node, count + 1, _AFTER),))
    if tag == _MAP:
        _, node, count, phase = frame
        if phase == _COLON:
            return [rest + ((_MAP, node, count, _AFTER), (_VALUE, node.values))] if b == 0x3A else []
        if phase == _AFTER:
            if b == 0x2C and (node.max_items is None or count < node.max_items):
                return [rest + ((_MAP, node, count, _NEXT),)]
            return [rest] if b == 0x7D and count >= node.min_items else []
        if b == 0x22 and (node.max_items is None or count < node.max_items):
            return [rest + ((_MAP, node, count + 1, _COLON), (_STRING, node.key, 0, 0))]
        return [rest] if b == 0x7D and phase == _START and node.min_items == 0 else []
    raise TypeError(frame)


def _string_step(frame: tuple, b: int, rest: tuple) -> list[tuple]:
    # sub: 0 plain; 1 after '\'; 2..5 after '\u' and (sub - 2) hex digits; 6 after '\uD' (then
    # 0-7: no surrogates); a tuple (need, low, high): continuation bytes of a UTF-8 character.
    _, node, count, sub = frame
    if sub == 0:
        if node.max_length is None and count > node.min_length:
            count = node.min_length  # the count matters no more: one state for the whole string
        if b == 0x22:
            return [rest] if count >= node.min_length else []
        if b < 0x20 or (node.max_length is not None and count >= node.max_length):
            return []
        if b == 0x5C:
            return [rest + ((_STRING, node, count + 1, 1),)]
        if b < 0x80:
            return [rest + ((_STRING, node, count + 1, 0),)]
        lead = _UTF8_LEADS.get(b)
        return [rest + ((_STRING, node, count + 1, lead),)] if lead is not None else []
    if sub == 1:
        if b in _ESCAPES:
            return [rest + ((_STRING, node, count, 0),)]
        return [rest + ((_STRING, node, count, 2),)] if b == 0x75 else []  # 'u'
    if isinstance(sub, tuple):
        need, low, high = sub
        if not low <= b <= high:
            return []
        return [rest + ((_STRING, node, count, 0 if need == 1 else (need - 1, 0x80, 0xBF)),)]
    if sub == 6:
        return [rest + ((_STRING, node, count, 4),)] if 0x30 <= b <= 0x37 else []
    if b not in _HEX:
        return []
    if sub == 2 and b in (0x64, 0x44):  # 'd', 'D'
        return [rest + ((_STRING, node, count, 6),)]
    return [rest + ((_STRING, node, count, 0 if sub == 5 else sub + 1),)]


# The bytes that may follow a UTF-8 lead byte (RFC 3629: no overlong forms, no surrogates).
_UTF8_LEADS: dict[int, tuple[int, int, int]] = {}
for _b in range(0xC2, 0xE0):
    _UTF8_LEADS[_b] = (1, 0x80, 0xBF)
for _b in range(0xE0, 0xF0):
    _UTF8_LEADS[_b] = (2, 0xA0 if _b == 0xE0 else 0x80, 0x9F if _b == 0xED else 0xBF)
for _b in range(0xF0, 0xF5):
    _UTF8_LEADS[_b] = (3, 0x90 if _b == 0xF0 else 0x80, 0x8F if _b == 0xF4 else 0xBF)


def _number_step(frame: tuple, b: int, rest: tuple) -> list[tuple]:
    # phase: 0 after '-'; 1 after a leading 0; 2 integer digits; 3 after '.'; 4 fraction
    # digits; 5 after 'e'; 6 after the exponent's sign; 7 exponent digits. A digit that may end
    # the number also leaves `rest` (the number done, the parent next).
    _, node, phase, digits = frame
    digit = b in _DIGITS
    if phase == 0:
        if b == 0x30:
            return [rest] if node.integer else [rest + ((_NUMBER, node, 1, 1),), rest]
        return [rest + ((_NUMBER, node, 2, 1),), rest] if digit else []
    if phase == 2 and digit:
        return [rest + ((_NUMBER, node, 2, digits + 1),), rest] if digits < MAX_INTEGER_DIGITS else []
    if node.integer:
        return []
    if phase in (1, 2):
        if b == 0x2E:
            return [rest + ((_NUMBER, node, 3, 0),)]
        return [rest + ((_NUMBER, node, 5, 0),)] if b in (0x65, 0x45) else []
    if phase == 3:
        return [rest + ((_NUMBER, node, 4, 1),), rest] if digit else []
    if phase == 4:
        if digit:
            return [rest + ((_NUMBER, node, 4, digits + 1),), rest] if digits < MAX_FRACTION_DIGITS else []
        return [rest + ((_NUMBER, node, 5, 0),)] if b in (0x65, 0x45) else []
    if phase in (5, 6):
        if phase == 5 and b in (0x2B, 0x2D):
            return [rest + ((_NUMBER, node, 6, 0),)]
        return [rest + ((_NUMBER, node, 7, 1),), rest] if digit else []
    if phase == 7 and digit and digits < MAX_EXPONENT_DIGITS:
        return [rest + ((_NUMBER, node, 7, digits + 1),), rest]
    return []


def _frame_cost(frame: tuple) -> int:
    """Bytes that finish this frame (its child, if any, done)."""
    tag = frame[0]
    if tag == _VALUE:
        return frame[1].minlen()
    if tag == _LITERAL:
        return min(len(v) for v in frame[1]) - frame[2]
    if tag == _STRING:
        _, node, count, sub = frame
        pending = sub[0] if isinstance(sub, tuple) else (0, 1, 4, 3, 2, 1, 3)[sub]
        return pending + max(0, node.min_length - count) + 1
    if tag == _NUMBER:
        return 1 if frame[2] in (0, 3, 5, 6) else 0
    if tag == _KEY:
        _, node, candidates, pos = frame
        return min(len(node.keys[i]) - pos + node.values[i].minlen() + node.after_cost(i + 1) for i in candidates)
    if tag == _OBJECT:
        _, node, index, phase = frame
        return node.after_cost(index) if phase == _AFTER else node.start_cost() if phase == _START \
            else node.key_cost(index)
    if tag == _ARRAY:
        _, node, count, phase = frame
        if phase == _AFTER:
            return node.after_cost(count)
        return node.start_cost() if phase == _START else node.items.minlen() + node.after_cost(count + 1)
    if tag == _MAP:
        _, node, count, phase = frame
        if phase == _COLON:
            return 1 + node.values.minlen() + node.after_cost(count)
        if phase == _AFTER:
            return node.after_cost(count)
        if phase == _START and node.min_items == 0:
            return 1
        return node.entry_cost() + node.after_cost(count + 1)
    raise TypeError(frame)


class _Automaton:
    """The schema's states, numbered as they are met, with their transitions and closing costs."""

    def __init__(self, root: _Node) -> None:
        self.lock = threading.RLock()
        self.states: list[frozenset] = []
        self._ids: dict[frozenset, int] = {}
        self.rows: list[list[int | None]] = []  # per state: the next state of each byte (None: not worked out)
        self.costs: list[int] = []  # per state: the fewest bytes that finish the JSON
        self.complete: list[bool] = []
        self.start = self._intern(frozenset([((_VALUE, root),)]))

    def _intern(self, state: frozenset) -> int:
        sid = self._ids.get(state)
        if sid is None:
            with self.lock:
                sid = self._ids.get(state)
                if sid is None:
                    sid = len(self.states)
                    self.states.append(state)
                    self.rows.append([None] * 256)
                    self.complete.append(() in state)
                    self.costs.append(min(sum(_frame_cost(f) for f in c) for c in state))
                    self._ids[state] = sid
        return sid

    def next(self, sid: int, b: int) -> int:
        """The state after byte `b` in state `sid` (_DEAD: `b` does not fit)."""
        row = self.rows[sid]
        nxt = row[b]
        if nxt is None:
            configs: list[tuple] = []
            for config in self.states[sid]:
                if config:
                    configs += _step(config, b)
            nxt = row[b] = self._intern(frozenset(configs)) if configs else _DEAD
        return nxt

    def feed(self, sid: int, data: bytes) -> int:
        for b in data:
            if sid == _DEAD:
                break
            sid = self.next(sid, b)
        return sid


# ----------------------------------------------------------------------------- the schema


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


# ----------------------------------------------------------------------------- the vocabulary


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _pieces(tokenizer: Any, size: int) -> list[str | None] | None:
    """The vocabulary's token strings as stored (byte-level 'Ġthe', sentencepiece '▁the'), if
    the tokenizer exposes them."""
    inner = getattr(tokenizer, "hf_tokenizer", None) or getattr(tokenizer, "hf", None)
    if inner is None:
        return None
    backend = getattr(inner, "backend_tokenizer", inner)
    lookup = getattr(backend, "id_to_token", None)
    if lookup is None:
        convert = getattr(inner, "convert_ids_to_tokens", None)
        if convert is None:
            return None
        return list(convert(list(range(size))))
    return [lookup(i) for i in range(size)]


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token id's bytes (None: a special token, or one whose bytes are unknown).

    Byte-level BPE spells a token's bytes in GPT-2's printable alphabet, a half UTF-8
    character included: read from the token strings when they agree with `decode` on the
    tokens that decode cleanly. Sentencepiece: '▁' is a space and '<0xAB>' a byte. Otherwise
    `decode([id])`, dropping tokens that decode to U+FFFD (a piece of a character).
    """
    size = int(tokenizer.vocab_size)
    special = {int(i) for i in (getattr(tokenizer, "special_tokens", None) or {}).values()}
    for name in ("eos_id", "bos_id", "pad_id", "end_of_turn_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            special.add(value)
    texts: dict[int, str] = {}

    def text_of(i: int) -> str:
        if i not in texts:
            texts[i] = tokenizer.decode([i])
        return texts[i]

    pieces = _pieces(tokenizer, size)
    mode = "decode"
    if pieces is not None:  # which spelling the pieces use: judged on a sample that decodes cleanly
        sample = [i for i in range(0, size, max(1, size // 2000)) if i not in special and pieces[i]]
        clean = [(pieces[i], text_of(i)) for i in sample if text_of(i) and "\ufffd" not in text_of(i)]
        as_bytes = sum(1 for p, t in clean if _byte_level(p) == t.encode("utf-8"))
        as_pieces = sum(1 for p, t in clean if p.replace("\u2581", " ") == t)
        if clean and as_bytes >= 0.9 * len(clean):
            mode = "byte-level"
        elif clean and "\u2581" in "".join(p for p, _ in clean) and as_pieces >= 0.5 * len(clean):
            mode = "sentencepiece"
    out: list[bytes | None] = []
    for i in range(size):
        if i in special:
            out.append(None)
            continue
        data: bytes | None = None
        piece = pieces[i] if pieces is not None else None
        if mode == "byte-level" and piece:
            data = _byte_level(piece)
        elif mode == "sentencepiece" and piece:
            byte = _BYTE_PIECE.fullmatch(piece)
            data = bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8")
        if data is None:
            text = text_of(i)
            data = text.encode("utf-8") if text and "\ufffd" not in text else None
        out.append(data or None)
    return out


def _byte_level(piece: str) -> bytes | None:
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in piece)
    except KeyError:
        return None


class Vocabulary:
    """A tokenizer's tokens as bytes, in a trie (shared by every schema on that tokenizer)."""

    def __init__(self, tokens: Sequence[bytes | None]) -> None:
        self.tokens = list(tokens)
        root: dict = {}
        for token_id, data in enumerate(self.tokens):
            if not data:
                continue
            node = root
            for b in data:
                node = node.setdefault(b, {})
            node.setdefault(None, []).append(token_id)
        self.root = _freeze(root)
        self.single_bytes = frozenset(d[0] for d in self.tokens if d is not None and len(d) == 1)
        # Tokens that are plain string content (whole characters, no quote, backslash or control
        # character): inside a string of no maxLength they all lead to the same state, so only
        # the others (`other_root`) need walking there.
        self.plain_ids = [i for i, d in enumerate(self.tokens) if d and _plain(d)]
        other: dict = {}
        for token_id, data in enumerate(self.tokens):
            if data and not _plain(data):
                node = other
                for b in data:
                    node = node.setdefault(b, {})
                node.setdefault(None, []).append(token_id)
        self.other_root = _freeze(other)


def _plain(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(c < " " or c in '"\\' for c in text)


def _freeze(node: dict) -> tuple:
    """A trie node as (ids ending here, ((byte, child), ...))."""
    children = tuple((b, _freeze(child)) for b, child in sorted((k, v) for k, v in node.items() if k is not None))
    return tuple(node.get(None, ())), children


_vocabularies: dict[int, tuple[Any, Vocabulary]] = {}
_vocabulary_lock = threading.Lock()


def vocabulary(tokenizer: Any) -> Vocabulary:
    """The `Vocabulary` of `tokenizer` (built once; token bytes from `token_bytes`)."""
    entry = _vocabularies.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        with _vocabulary_lock:
            entry = _vocabularies.get(id(tokenizer))
            if entry is None or entry[0] is not tokenizer:
                entry = _vocabularies[id(tokenizer)] = (tokenizer, Vocabulary(token_bytes(tokenizer)))
    return entry[1]


# ----------------------------------------------------------------------------- schema x tokens


@dataclasses.dataclass
class _Allowed:
    """The tokens allowed in one state: ids sorted by the bytes that close the JSON after them."""

    ids: list[int]
    closes: list[int]
    next: dict[int, int]  # token id -> state after it
    slices: dict[tuple, list[int]] = dataclasses.field(default_factory=dict)  # (count, stop ids) -> ids


class TokenConstraint:
    """A `JsonSchema` against one vocabulary: the token ids each state allows, worked out once.

    `guide(stop_ids, max_tokens)` gives a row's `TokenGuide`. `cache` is free for a
    framework's own per-(state, budget) tensors (the torch hook keeps its index tensors here),
    keyed by what `TokenGuide.allowed()` returns first.
    """

    def __init__(self, schema: JsonSchema, vocabulary: Vocabulary) -> None:
        self.schema, self.vocabulary = schema, vocabulary
        self.automaton = schema.automaton
        self._allowed: dict[int, _Allowed] = {}
        self.cache: dict[Any, Any] = {}
        needed = set(range(0x20, 0x7F))
        for node in _nodes(schema.root):
            if isinstance(node, _Literal):
                needed.update(b for v in node.values for b in v)
            elif isinstance(node, _Object):
                needed.update(b for k in node.keys for b in k)
        # Every byte a closing may need has a token of its own: the length guarantee holds.
        self.byte_complete = needed <= vocabulary.single_bytes

    @property
    def shortest(self) -> int:
        """Tokens of the shortest JSON (one byte a token: at most this many)."""
        return self.schema.shortest

    def guide(self, stop_ids: frozenset[int] | set[int], max_tokens: int) -> TokenGuide:
        return TokenGuide(self, frozenset(stop_ids), max_tokens)

    def allowed_in(self, sid: int) -> _Allowed:
        """The tokens state `sid` allows (the trie walked once, then cached)."""
        found = self._allowed.get(sid)
        if found is not None:
            return found
        automaton = self.automaton
        pairs: list[tuple[int, int, int]] = []  # (closing bytes after, id, next state)
        costs = automaton.costs
        root = self.vocabulary.root
        if _inside_free_string(automaton.states[sid]):
            steady = automaton.next(sid, 0x61)  # after any plain text: the same state as after 'a'
            pairs += [(costs[steady], i, steady) for i in self.vocabulary.plain_ids]
            root = self.vocabulary.other_root
        stack = [(root, sid)]
        step = automaton.next
        while stack:
            (_, children), state = stack.pop()
            row = automaton.rows[state]
            for b, child in children:
                nxt = row[b]
                if nxt is None:
                    nxt = step(state, b)
                if nxt == _DEAD:
                    continue
                ids, grandchildren = child
                if ids:
                    cost = costs[nxt]
                    pairs += [(cost, i, nxt) for i in ids]
                if grandchildren:
                    stack.append((child, nxt))
        pairs.sort()
        found = _Allowed([i for _, i, _ in pairs], [c for c, _, _ in pairs], {i: n for _, i, n in pairs})
        self._allowed[sid] = found
        return found


def _inside_free_string(state: frozenset) -> bool:
    """Whether every configuration is in the plain text of a string of no maxLength whose
    minLength is reached (any plain text then leads to one state)."""
    for config in state:
        if not config:
            return False
        frame = config[-1]
        if frame[0] != _STRING or frame[3] != 0 or frame[1].max_length is not None or frame[2] < frame[1].min_length:
            return False
    return True


def _nodes(root: _Node) -> list[_Node]:
    seen: dict[int, _Node] = {}
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if isinstance(node, _AnyOf):
            todo += node.options
        elif isinstance(node, _Object):
            todo += node.values
        elif isinstance(node, _Array):
            todo.append(node.items)
        elif isinstance(node, _Map):
            todo += [node.key, node.values]
    return list(seen.values())


class TokenGuide:
    """One row's constraint: which ids the next token may be, and the state after each.

    `allowed()` -> (key, ids): the ids (a list shared by every call with the same key; the key
    is hashable, for a framework's cached tensors). Once the JSON is complete, the stop ids are
    allowed (and, where the JSON could go on, e.g. a top-level number, its continuations);
    `finished` is true when the JSON is complete and the tokenizer has no stop id to end it,
    or nothing more fits: the loop ends the row there. `failed` is true after a token the
    constraint did not allow (a backend that does not apply the mask): the guide steps aside.
    """

    def __init__(self, constraint: TokenConstraint, stop_ids: frozenset[int], max_tokens: int) -> None:
        self.constraint = constraint
        self.automaton = constraint.automaton
        self.stop_ids = tuple(sorted(stop_ids))
        self.state = self.automaton.start
        self.remaining = max_tokens
        self.failed = False

    @property
    def complete(self) -> bool:
        return not self.failed and self.automaton.complete[self.state]

    @property
    def finished(self) -> bool:
        if self.failed or not self.complete:
            return False
        return not self.stop_ids or self.remaining <= 0

    def allowed(self) -> tuple[Any, list[int]]:
        """(key, ids) the next token may be, within the budget left."""
        entry = self.constraint.allowed_in(self.state)
        budget = self.remaining - 1  # tokens left after this one
        complete = self.automaton.complete[self.state]
        if entry.closes and entry.closes[-1] > budget:
            count = bisect.bisect_right(entry.closes, budget)
            if count == 0 and not complete:
                count = len(entry.ids)  # nothing fits (no token of one byte): the best there is
        else:
            count = len(entry.ids)
        stops = self.stop_ids if complete else ()
        ids = entry.slices.get((count, stops))
        if ids is None:
            ids = entry.slices[(count, stops)] = list(stops) + entry.ids[:count]
        return (self.constraint, self.state, count, stops), ids

    def advance(self, token: int) -> None:
        """The row took `token` (a stop id ends the row: nothing to do)."""
        self.remaining -= 1
        if self.failed or token in self.stop_ids:
            return
        nxt = self.constraint.allowed_in(self.state).next.get(int(token))
        if nxt is None:
            self.failed = True
        else:
            self.state = nxt


def start_guides(rows: Sequence[Any]) -> list[TokenGuide | None] | None:
    """Each row's guide (`Sampling.constraint`), or None when no row has a constraint (so an
    unconstrained loop does no extra work)."""
    if all(getattr(r, "constraint", None) is None for r in rows):
        return None
    return [r.constraint.guide(r.stop_ids, r.max_tokens) if r.constraint is not None else None for r in rows]


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


# ----------------------------------------------------------------------------- generate_structured

STRUCTURED_ATTEMPTS = 3


def generate_structured(backend: Any, request: Any, schema: Any, attempts: int = STRUCTURED_ATTEMPTS) -> Any:
    """An instance of `schema` (a pydantic model class; a dict schema gives the JSON value)
    generated by `backend` under the constraint, parsed and validated.

    The request is sent with `constraint` set (a local backend decodes only JSON of the
    schema). A reply that still does not parse (a backend that ignores constraints, a value
    rule the grammar does not follow) is asked again, up to `attempts` times in all, with
    other seeds (sampled at temperature 1 where the request was greedy); then a RungError
    says why the last one failed.
    """
    compiled = JsonSchema.of(schema)
    current = dataclasses.replace(request, constraint=compiled)
    problem = ""
    for attempt in range(max(1, attempts)):
        completion = backend.generate(current)
        try:
            return compiled.parse(completion.text)
        except ValueError as exc:
            problem = _one_line(exc)
        seed = (request.seed if request.seed is not None else 0) + attempt + 1
        greedy = not current.temperature
        current = dataclasses.replace(current, seed=seed, temperature=1.0 if greedy else current.temperature)
    name = getattr(backend, "name", type(backend).__name__)
    raise RungError(f"{name}: no reply parsed into {compiled.name} in {attempts} attempts; the last: {problem}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
