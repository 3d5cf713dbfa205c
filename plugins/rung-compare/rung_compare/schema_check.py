"""JSON-schema validation for the `json-schema` assertion.

The `jsonschema` package validates when it is installed (every draft, every keyword). Without
it, `SmallValidator` checks the keywords structured-output schemas use (type, properties,
required, additionalProperties, items, enum, const, bounds, lengths, pattern, anyOf/oneOf/
allOf/not, local $ref); a schema using any other keyword is refused rather than half-checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rung.errors import ConfigError

KNOWN = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "uniqueItems", "anyOf", "oneOf", "allOf", "not", "$ref", "$defs", "definitions", "title", "description",
    "default", "examples", "$schema", "$id", "$comment", "format", "multipleOf",
}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer(),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_problems(schema: Mapping[str, Any], where: str) -> None:
    """Refuse, in one line naming `where`, a schema that is not one (or, without the
    `jsonschema` package, one using keywords the small validator does not check)."""
    if not isinstance(schema, Mapping):
        raise ConfigError(f"{where}: a JSON schema is a mapping, not {type(schema).__name__}")
    try:
        import jsonschema
    except ImportError:
        unknown = sorted(_keywords(schema) - KNOWN)
        if unknown:
            raise ConfigError(f"{where}: the schema uses {', '.join(unknown)}, which rung's small validator does not "
                              "check; pip install jsonschema to validate every keyword") from None
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{where}: not a valid JSON schema: {exc.message}") from None


def validate(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """None when `instance` fits `schema`, else what is wrong, in a few words."""
    try:
        import jsonschema
    except ImportError:
        return SmallValidator(schema).problem(instance, schema, "$")
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(instance))
    if error is None:
        return None
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path}: {error.message}"


def _keywords(schema: Any) -> set[str]:
    """Every keyword used anywhere in `schema` (property names are not keywords)."""
    found: set[str] = set()
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            found.add(key)
            if key in ("properties", "$defs", "definitions"):
                for sub in (value or {}).values():
                    found |= _keywords(sub)
            elif key in ("items", "additionalProperties", "not"):
                found |= _keywords(value)
            elif key in ("anyOf", "oneOf", "allOf"):
                for sub in value or []:
                    found |= _keywords(sub)
    return found


class SmallValidator:
    """The keywords of `KNOWN` checked against one document (the fallback without `jsonschema`)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#/"):
            raise ConfigError(f"$ref {ref!r}: only local references (#/$defs/...) are checked")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def problem(self, value: Any, schema: Any, path: str) -> str | None:
        if schema is True or schema == {}:
            return None
        if schema is False:
            return f"{path}: no value is allowed here"
        if "$ref" in schema:
            return self.problem(value, self._resolve(schema["$ref"]), path)
        kinds = schema.get("type")
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if not any(TYPES[k](value) for k in kinds):
                return f"{path}: {_short(value)} is not of type {' or '.join(kinds)}"
        if "enum" in schema and value not in schema["enum"]:
            return f"{path}: {_short(value)} is not one of {schema['enum']}"
        if "const" in schema and value != schema["const"]:
            return f"{path}: {_short(value)} is not {schema['const']!r}"
        for check in (self._number, self._string, self._array, self._object, self._combined):
            found = check(value, schema, path)
            if found:
                return found
        return None

    def _number(self, value: Any, schema: Mapping[str, Any], path: str) -> str | None:
        if not TYPES["number"](value):
            return None
        bounds = [("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                  ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b),
                  ("multipleOf", lambda b: (value / b).is_integer())]
        for key, holds in bounds:
            if key in schema and not holds(schema[key]):
                return f"{path}: {value} breaks {key} {schema[key]}"
        return None

    def _string(self, value: Any, schema: Mapping[str, Any], path: str) -> str | None:
        if not isinstance(value, str):
            return None
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']} characters"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{path}: {_short(value)} does not match {schema['pattern']!r}"
        return None

    def _array(self, value: Any, schema: Mapping[str, Any], path: str) -> str | None:
        if not isinstance(value, list):
            return None
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{path}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path}: more than {schema['maxItems']} items"
        if schema.get("uniqueItems") and len({repr(v) for v in value}) < len(value):
            return f"{path}: items are not unique"
        if "items" in schema:
            for i, item in enumerate(value):
                found = self.problem(item, schema["items"], f"{path}[{i}]")
                if found:
                    return found
        return None

    def _object(self, value: Any, schema: Mapping[str, Any], path: str) -> str | None:
        if not isinstance(value, dict):
            return None
        for name in schema.get("required", []):
            if name not in value:
                return f"{path}: '{name}' is required"
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                found = self.problem(item, properties[name], f"{path}.{name}")
            elif "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                found = f"{path}: '{name}' is not allowed" if extra is False else (
                    self.problem(item, extra, f"{path}.{name}") if isinstance(extra, Mapping) else None)
            else:
                found = None
            if found:
                return found
        return None

    def _combined(self, value: Any, schema: Mapping[str, Any], path: str) -> str | None:
        if "allOf" in schema:
            for sub in schema["allOf"]:
                found = self.problem(value, sub, path)
                if found:
                    return found
        if "anyOf" in schema and all(self.problem(value, sub, path) for sub in schema["anyOf"]):
            return f"{path}: fits none of anyOf"
        if "oneOf" in schema:
            fits = sum(self.problem(value, sub, path) is None for sub in schema["oneOf"])
            if fits != 1:
                return f"{path}: fits {fits} of oneOf, not exactly one"
        if "not" in schema and self.problem(value, schema["not"], path) is None:
            return f"{path}: fits the schema under 'not'"
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
