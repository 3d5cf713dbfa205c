"""`rung prompt --schema PATH.json|MODULE:MODEL`: the reply as JSON that fits a schema.

The schema is a JSON-schema file or a pydantic model (``mymodels:Person``, ``models.py:Person``).
A local backend decodes under the schema's constraint (`rung.decoding.structured`); a hosted
one uses its API's structured outputs for a pydantic model, and validated retries for a schema
file. The validated JSON is printed compact, on one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rung_prompt.reply import Reply, write
from rung_prompt.target import Target


def schema_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--schema."""
    return click.option("--schema", metavar="PATH.json|MODULE:MODEL",
                        help="answer with JSON that fits this schema: a JSON-schema file, or a pydantic model "
                             "(mymodels:Person, models.py:Person); the validated JSON is printed")(func)


def load_schema(reference: str) -> Any:
    """A pydantic model class or a schema dict, from `reference` (one clear line when it is wrong)."""
    path = Path(reference)
    if reference.endswith(".json") or (path.is_file() and ":" not in reference):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"--schema: cannot read {reference}: {exc.strerror or exc}") from None
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.UsageError(f"--schema: {reference}:{exc.lineno}: not JSON ({exc.msg})") from None
        if not isinstance(schema, dict):
            raise click.UsageError(f"--schema: {reference}: a JSON schema is an object, got {type(schema).__name__}")
        return schema
    module_name, _, name = reference.rpartition(":")
    if not module_name or not name:
        raise click.UsageError(f"--schema: '{reference}' is neither a .json file nor MODULE:MODEL")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None or not Path(module_name).is_file():
                raise click.UsageError(f"--schema: no file {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # a module in the current folder, as `python -m` finds it
            module = importlib.import_module(module_name)
    except click.UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module: say what went wrong in one line
        raise click.UsageError(f"--schema: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    model = getattr(module, name, None)
    if not (isinstance(model, type) and hasattr(model, "model_json_schema")):
        raise click.UsageError(f"--schema: {reference} is not a pydantic model class")
    return model


def send_structured(target: Target, request: Any, reference: str | dict) -> Reply:
    """Ask for JSON of the schema (a --schema reference, or a template's schema dict); print it
    (validated) and return the reply for the log."""
    from rung.decoding.structured import JsonSchema, generate_structured

    schema = load_schema(reference) if isinstance(reference, str) else reference
    JsonSchema.of(schema)  # a schema the constraint cannot follow is one line before anything is sent
    reply = Reply()
    start = time.perf_counter()
    native = isinstance(schema, type) and hasattr(target.backend, "generate_structured")
    value = target.backend.generate_structured(request, schema) if native else \
        generate_structured(target.backend, request, schema)
    reply.duration_s = reply.first_token_s = time.perf_counter() - start
    if hasattr(value, "model_dump_json"):
        reply.text = value.model_dump_json()
    else:
        reply.text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    reply.finish_reason = "stop"
    write(reply.text + "\n")
    return reply
