"""Tool calls: Python functions a model may call, and the loop that runs them.

Declaring a tool: `tool(function)` (also a decorator) reads a typed signature and its
docstring. Each parameter's annotation becomes its JSON schema (str, int, float, bool,
Optional, list, dict, Literal, enums, pydantic models, anything pydantic can describe); a
parameter with a default is optional; the docstring's first paragraphs describe the tool
and its ``Args:`` section (Google style, ``name: text`` or ``name (type): text``, or Sphinx
``:param name: text``) describes each parameter. A parameter without an annotation, or
``*args``/``**kwargs``, is refused in one line: a model needs to know what to send.

The loop: `run_tools(backend, request, tools, max_rounds=5)` asks the model; while its
reply asks for tool calls, each call is run, the assistant's call turn and one ``tool``
turn per result are appended to the conversation, and the model is asked again. At most
`max_rounds` rounds of calls are run; a model that still asks for tools after them is a
`MaxRoundsError` (one line, carrying the results run so far). A tool that raises, gets
arguments that are not valid JSON or do not fit its signature, or is not among the tools,
does not stop the loop: the model receives ``error: ...`` as that call's result, and can
try again or answer. Every result is given to `on_result` as it is made (to log it).

Backends: hosted ones with ``capabilities.tools`` (openai, anthropic) pass the tools through
their APIs. A local backend (torch, hf, jax) takes part when its tokenizer is a transformers
tokenizer whose chat template renders ``tools`` (Qwen 2.5, Hermes, Llama 3.1, Mistral
templates do): the prompt is that template rendered with the tools in the OpenAI function
format, and the calls are read from the generated text by this convention:

- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes, Qwen), one call
  each; text outside them is the reply's text; or
- a reply that is just a JSON object ``{"name": ..., "arguments"|"parameters": {...}}`` (or a
  list of them) naming one of the tools (Llama 3.1's convention), optionally in a code fence.

Any other local model is refused in one line ("backend torch: this model's chat template has
no tool support"): rung never makes up a tool format a model was not trained on.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.records import Completion, GenerationRequest, Message, ToolCall, ToolSpec, Usage

__all__ = [
    "MaxRoundsError", "Tool", "ToolResult", "load_tool", "parse_tool_calls", "run_tools", "tool",
]


class MaxRoundsError(RungError):
    """The model still asked for tools after `max_rounds` rounds; `results` are the calls run."""

    def __init__(self, message: str, results: Sequence[ToolResult]) -> None:
        super().__init__(message)
        self.results = list(results)


@dataclass(frozen=True)
class ToolResult:
    """One call that was run: the call, the text the model receives, whether it failed."""

    call: ToolCall
    output: str
    is_error: bool = False
    seconds: float = 0.0
    round: int = 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record (what the prompt log keeps)."""
        return {"round": self.round, "id": self.call.id, "name": self.call.name, "arguments": self.call.arguments,
                "output": self.output, "is_error": self.is_error, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True, eq=False)
class Tool(ToolSpec):
    """A `ToolSpec` with the function that runs it (`tool(function)` builds one)."""

    function: Callable[..., Any] | None = None
    arguments_model: Any = field(default=None, repr=False)  # the pydantic model that checks arguments

    __hash__ = ToolSpec.__hash__

    @property
    def spec(self) -> ToolSpec:
        """The part a backend sends: name, description, parameters."""
        return ToolSpec(self.name, self.description, self.parameters)

    def run(self, call: ToolCall) -> tuple[str, bool]:
        """(result text, is_error) of `call`; whatever goes wrong is said in the text, never raised."""
        if self.function is None:
            return f"error: tool {self.name} has no function to run", True
        try:
            arguments = call.parsed_arguments()
        except ValueError as exc:
            return f"error: the arguments of {self.name} are not valid JSON ({exc})", True
        if not isinstance(arguments, dict):
            return f"error: the arguments of {self.name} must be a JSON object, got {type(arguments).__name__}", True
        if self.arguments_model is not None:
            from pydantic import ValidationError

            try:
                checked = self.arguments_model.model_validate(arguments)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(arguments)'}: {e['msg']}"
                                     for e in exc.errors())
                return f"error: invalid arguments for {self.name}: {problems}", True
            arguments = {name: getattr(checked, name) for name in type(checked).model_fields}
        try:
            value = self.function(**arguments)
        except Exception as exc:  # noqa: BLE001 - a tool's failure is the model's to read
            detail = " ".join(str(exc).split())
            return f"error: {type(exc).__name__}" + (f": {detail}" if detail else ""), True
        return result_text(value), False


def result_text(value: Any) -> str:
    """A tool's return value as the text a model reads: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        value = dump(mode="json")
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------------ declaring tools

_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments", "returns", "return",
             "yields", "raises", "examples", "example", "note", "notes", "see also", "attributes"}
_ARG_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_SPHINX = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) of a Google- or Sphinx-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    entry_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = stripped[:-1].lower() if stripped.endswith(":") else None
        if indent == 0 and header in _SECTIONS:
            section, current, entry_indent = header, None, None
            continue
        sphinx = _SPHINX.match(stripped)
        if sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            continue
        if stripped.startswith(":") and section == "sphinx":  # :returns: and the like
            current = None
            continue
        if section is None:
            description.append(stripped)
        elif section in _ARG_SECTIONS:
            if not stripped:
                continue
            if indent == 0:  # text after the section, unindented: the section ended
                section, current = "other", None
                continue
            if entry_indent is None:
                entry_indent = indent
            match = _ENTRY.match(stripped) if indent <= entry_indent else None
            if match:
                current = match.group(1)
                params[current] = match.group(3).strip()
            elif current is not None:
                params[current] = (params[current] + " " + stripped).strip()
        elif section == "sphinx" and current is not None and stripped:
            params[current] = (params[current] + " " + stripped).strip()
    text = "\n".join(description).strip()
    text = re.sub(r"(?<!\n)\n(?!\n)", " ", text)  # join wrapped lines, keep paragraph breaks
    return text, params


def _drop_titles(node: Any, names: bool = False) -> Any:
    """pydantic's schema without its generated "title"s (noise a model pays tokens for)."""
    if isinstance(node, dict):
        if not names:
            node.pop("title", None)
        for key, value in node.items():
            _drop_titles(value, names=not names and key in ("properties", "$defs", "definitions"))
    elif isinstance(node, list):
        for value in node:
            _drop_titles(value)
    return node


def tool(function: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None) -> Any:
    """A `Tool` from a typed Python function (see the module docstring); also a decorator,
    bare (``@tool``) or with a name or description (``@tool(name="lookup")``)."""
    if function is None:
        return lambda f: tool(f, name=name, description=description)
    if isinstance(function, Tool):
        return function
    from pydantic import Field, create_model
    from typing import get_type_hints

    tool_name = name or getattr(function, "__name__", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tool_name or ""):
        raise RungError(f"tool {tool_name!r}: a tool name is 1-64 letters, digits, '_' or '-'")
    where = f"tool {tool_name}"
    try:
        signature = inspect.signature(function)
        hints = get_type_hints(function, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise RungError(f"{where}: its signature cannot be read ({exc})") from None
    summary, docs = parse_docstring(inspect.getdoc(function))
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise RungError(f"{where}: *{parameter.name} cannot be described to a model; name each parameter")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise RungError(f"{where}: parameter '{parameter.name}' is positional-only; a model sends arguments by "
                            "name")
        if parameter.name not in hints:
            raise RungError(f"{where}: parameter '{parameter.name}' has no type annotation; annotate it (e.g. "
                            f"{parameter.name}: str) so the model knows what to send")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], Field(default, description=docs.get(parameter.name)))
    try:
        model = create_model(f"{tool_name}_arguments", **fields)
        schema = _drop_titles(model.model_json_schema())
    except Exception as exc:  # noqa: BLE001 - pydantic cannot describe some annotation
        raise RungError(f"{where}: its parameters have no JSON schema ({' '.join(str(exc).split())[:200]})") from None
    schema.setdefault("properties", {})
    return Tool(name=tool_name, description=description or summary, parameters=schema, function=function,
                arguments_model=model)


def load_tool(reference: str) -> Tool:
    """The tool a command line names: ``module:function`` (a module importable from here or
    the current directory) or ``path/to/file.py:function``."""
    module_name, _, attribute = reference.rpartition(":")
    if not module_name or not attribute:
        raise RungError(f"--tool {reference}: expected MODULE:FUNCTION, e.g. --tool mytools:get_weather")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise RungError(f"--tool {reference}: no file {path}")
            spec = importlib.util.spec_from_file_location(f"rung_tool_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            added = "" not in sys.path and str(Path.cwd()) not in sys.path
            if added:
                sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: modules beside you import
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(str(Path.cwd()))
    except RungError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import: say how, in one line
        raise RungError(f"--tool {reference}: cannot import {module_name} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None
    function = getattr(module, attribute, None)
    if function is None or not callable(function):
        raise RungError(f"--tool {reference}: {module_name} has no function {attribute}")
    return tool(function)


def as_tool(item: Any) -> Tool | ToolSpec:
    """A Tool from a function; a Tool or ToolSpec as it is."""
    if isinstance(item, ToolSpec):
        return item
    if callable(item):
        return tool(item)
    raise RungError(f"a tool is a function or a rung.tools.Tool, got {type(item).__name__}")


# ------------------------------------------------------------------------------ the loop


def run_tools(backend: Any, request: GenerationRequest, tools: Iterable[Any], max_rounds: int = 5,
              on_result: Callable[[ToolResult], None] | None = None) -> Completion:
    """The model's final answer to `request` after it called `tools` (functions or Tools) as
    it asked, at most `max_rounds` rounds of calls (see the module docstring).

    The Completion returned is the last reply, its usage the sum over every round.
    """
    if max_rounds < 0:
        raise RungError(f"max_rounds must be 0 or more, got {max_rounds}")
    if request.raw or request.prompt_ids is not None or request.echo:
        raise RungError("tools need a chat request (messages), not a raw, token-id or echo prompt")
    table = {}
    for item in tools:
        entry = as_tool(item)
        if entry.name in table:
            raise RungError(f"two tools are named {entry.name}; a model tells them apart by name")
        table[entry.name] = entry
    if not table:
        raise RungError("run_tools needs at least one tool")
    specs = tuple(entry.spec if isinstance(entry, Tool) else entry for entry in table.values())
    messages = list(request.messages) or [Message("user", request.prompt or "")]
    current = replace(request, messages=tuple(messages), prompt=None, tools=specs)
    complete = _completer(backend)
    results: list[ToolResult] = []
    prompt_tokens = completion_tokens = 0
    for round_number in range(1, max_rounds + 2):
        done = complete(current)
        prompt_tokens += done.usage.prompt_tokens
        completion_tokens += done.usage.completion_tokens
        if not done.tool_calls:
            return replace(done, usage=Usage(prompt_tokens, completion_tokens))
        if round_number > max_rounds:
            asked = ", ".join(dict.fromkeys(call.name for call in done.tool_calls))
            raise MaxRoundsError(f"tools: the model still asks for tool calls ({asked}) after {max_rounds} "
                                 f"round{'s' if max_rounds != 1 else ''}; raise max_rounds (rung prompt "
                                 "--max-rounds N)", results)
        messages.append(Message("assistant", done.text, tool_calls=done.tool_calls))
        for call in done.tool_calls:
            result = _run_call(table, call, round_number)
            results.append(result)
            if on_result is not None:
                on_result(result)
            messages.append(Message("tool", result.output, tool_call_id=call.id, name=call.name))
        current = replace(current, messages=tuple(messages))
    raise AssertionError("unreachable")  # the loop returns or raises


def _run_call(table: Mapping[str, Any], call: ToolCall, round_number: int) -> ToolResult:
    start = time.perf_counter()
    entry = table.get(call.name)
    if entry is None:
        output, is_error = f"error: no tool named {call.name}; the tools are {', '.join(table)}", True
    elif not isinstance(entry, Tool):
        output, is_error = f"error: tool {call.name} has no function to run", True
    else:
        output, is_error = entry.run(call)
    return ToolResult(call, output, is_error, time.perf_counter() - start, round_number)


def backend_name(backend: Any) -> str:
    """The name a user knows a backend by (torch, hf, openai, ...)."""
    provider = getattr(backend, "provider", None)
    if isinstance(provider, str) and provider:
        return provider
    name = type(backend).__name__
    return (name[: -len("Backend")] if name.endswith("Backend") and len(name) > 7 else name).lower()


def _completer(backend: Any) -> Callable[[GenerationRequest], Completion]:
    """How one round asks the model: the backend's own tool support, or a local chat template's."""
    capabilities = getattr(backend, "capabilities", None)
    if getattr(capabilities, "tools", False):
        return backend.generate
    template = LocalToolTemplate.of(backend)
    return template.generate


# ------------------------------------------------------------------------------ local models


@dataclass
class LocalToolTemplate:
    """A local backend whose transformers chat template renders tools; see the module docstring."""

    backend: Any
    tokenizer: Any  # rung's TransformersTokenizer (`.hf` is the transformers tokenizer)
    rounds: int = 0  # replies read so far: call ids are call_<round>_<index>, unique in a loop

    @classmethod
    def of(cls, backend: Any) -> LocalToolTemplate:
        """The backend's tool template, or the one-line refusal when its model has none."""
        tokenizer = getattr(backend, "tokenizer", None)
        hf = getattr(tokenizer, "hf", None)
        if hf is None or not getattr(hf, "chat_template", None) or not _renders_tools(hf):
            raise RungError(f"backend {backend_name(backend)}: this model's chat template has no tool support")
        return cls(backend, tokenizer)

    def render(self, request: GenerationRequest) -> str:
        """The prompt: the chat template with the tools, ending with the assistant's turn opened."""
        return self.tokenizer.hf.apply_chat_template(
            hf_messages(request.chat()), tools=[openai_function(spec) for spec in request.tools],
            tokenize=False, add_generation_prompt=True)

    def generate(self, request: GenerationRequest) -> Completion:
        from rung.decoding.prompt import end_of_turn

        text = self.render(request)
        marker_ids, strings = end_of_turn(self.tokenizer)
        stops = [*request.stop, *strings, *(self.tokenizer.decode([i]) for i in sorted(marker_ids))]
        prompt = replace(request, messages=(), system=None, prompt=text, prompt_ids=tuple(self.tokenizer.encode(text)),
                         tools=(), tool_choice=None, stop=tuple(s for s in dict.fromkeys(stops) if s))
        done = self.backend.generate(prompt)
        self.rounds += 1
        reply, calls = parse_tool_calls(done.text, {spec.name for spec in request.tools}, f"call_{self.rounds}")
        if not calls:
            return done
        return replace(done, text=reply, tool_calls=calls, finish_reason="tool_calls")


_PROBE = "rung_probe_tool_3f9a"


def _renders_tools(hf: Any) -> bool:
    """Whether the chat template writes the tools it is given (a template that ignores them
    renders no tool name)."""
    probe = {"type": "function", "function": {"name": _PROBE, "description": "probe",
                                              "parameters": {"type": "object", "properties": {}}}}
    try:
        text = hf.apply_chat_template([{"role": "user", "content": "hi"}], tools=[probe], tokenize=False,
                                      add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render tools has no tool support
        return False
    return isinstance(text, str) and _PROBE in text


def openai_function(spec: ToolSpec) -> dict[str, Any]:
    """A tool in the OpenAI function format (what chat templates and the OpenAI API read)."""
    return {"type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": dict(spec.parameters)}}


def hf_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as transformers chat templates read them, tool calls and results included."""
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": _arguments_value(c)}}
                                  for c in m.tool_calls]
        if m.role == "tool":
            item["tool_call_id"] = m.tool_call_id
            item["name"] = m.name
        out.append(item)
    return out


def _arguments_value(call: ToolCall) -> Any:
    try:
        return call.parsed_arguments()
    except ValueError:
        return call.arguments


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_tool_calls(text: str, names: Iterable[str], id_prefix: str = "call") -> tuple[str, tuple[ToolCall, ...]]:
    """(reply text, calls) read from a local model's text by the convention in the module
    docstring; `names` are the tools offered (a bare JSON object naming none is plain text)."""
    known = set(names)
    calls: list[ToolCall] = []
    if "<tool_call>" in text:
        for body in _TAGGED.findall(text):
            calls.append(_call_from(body, len(calls), id_prefix))
        return _TAGGED.sub("", text).strip(), tuple(calls)
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    candidate = fenced.group(1) if fenced else stripped
    if not candidate.startswith(("{", "[")):
        return text, ()
    try:
        value = json.loads(candidate)
    except ValueError:
        return text, ()
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, dict) and item.get("name") in known
                            and isinstance(item.get("arguments", item.get("parameters", {})), (dict, str))
                            for item in items):
        return text, ()
    for item in items:
        calls.append(_call_from(json.dumps(item), len(calls), id_prefix))
    return "", tuple(calls)


def _call_from(body: str, index: int, id_prefix: str) -> ToolCall:
    """One call from the JSON a model wrote; JSON that is not a call still becomes a call
    (named as written, or ``?``) so the model is told what was wrong with it."""
    try:
        value = json.loads(body)
    except ValueError:
        return ToolCall(f"{id_prefix}_{index}", "?", body)
    if not isinstance(value, dict):
        return ToolCall(f"{id_prefix}_{index}", "?", body)
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(str(value.get("id") or f"{id_prefix}_{index}"), str(value.get("name") or "?"), text)
