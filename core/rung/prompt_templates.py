"""Prompt templates: a small YAML file that says how to ask (system prompt, a Jinja user turn with
variables, few-shot turns, default backend, model and sampling, an output schema, tools).

```yaml
description: Summarise a text in a few words
system: You are terse. Answer in {{ style }}.
prompt: |
  Summarise in at most {{ words }} words:
  {{ input }}
examples:                       # few-shot turns, sent in order before the user turn
  - user: Summarise in at most 3 words: The cat sat on the mat all day.
    assistant: Cat sat, mat.
  - {role: user, content: ...}  # or one message at a time
variables:
  words: {default: "5", description: how many words at most}
  style: plain English          # shorthand for {default: plain English}
backend: openai                 # defaults the command line overrides
model: gpt-4o-mini
options: {base_url: ...}        # backend options
temperature: 0.2                # sampling: temperature, top_p, top_k, max_tokens, stop, seed
schema: {type: object, ...}     # optional JSON schema for structured output
tools: [mytools:lookup]         # optional tools: module:function, or file.py:function beside it
```

`load_template(name_or_path)` finds `NAME.yaml` in the given folders, then in the templates
folder of the rung config directory (`templates_dir()`), or reads an explicit path;
`PromptTemplate.render(variables)` gives the `GenerationRequest`: a system message, the
few-shot turns in order, then the user turn. `system` and `prompt` are Jinja, rendered in a
sandbox with strict undefined variables; as Jinja does, one trailing newline (what YAML's `|`
adds) is dropped from each, and from each example's text. Every problem is one ConfigError
line naming the template file and, where known, its line. Jinja is imported on use.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung.errors import ConfigError, excerpt
from rung.paths import config_dir
from rung.records import GenerationRequest, Message

SUFFIXES = (".yaml", ".yml")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed")
KEYS = ("description", "system", "prompt", "examples", "variables", "backend", "model", "options",
        "schema", "tools", *SAMPLING_KEYS)
INPUT = "input"  # the variable `rung prompt -t NAME "TEXT"` fills with TEXT

STARTER = """\
# A rung prompt template: `rung prompt -t {name} -p topic=...`; see `rung templates --help`.
description: What this template is for
system: You are a helpful assistant. Answer briefly.
prompt: |
  Tell me about {{{{ topic }}}}.
examples: []            # few-shot turns: - {{user: ..., assistant: ...}}
variables:
  topic: {{description: what to ask about}}
# backend: openai
# model: gpt-4o-mini
# temperature: 0.2
# max_tokens: 200
"""


class MissingVariableError(ConfigError):
    """A template needs variables that were given no value and have no default."""

    def __init__(self, message: str, names: Sequence[str]) -> None:
        super().__init__(message)
        self.names = tuple(names)


@dataclass(frozen=True)
class Variable:
    """A variable a template declares: its default (None: it must be given) and what it means."""

    name: str
    default: str | None = None
    description: str = ""


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded, checked template; `render` turns variables into a request."""

    name: str
    path: Path
    system: str | None = None
    prompt: str | None = None
    examples: tuple[Message, ...] = ()
    variables: Mapping[str, Variable] = field(default_factory=dict)
    description: str = ""
    backend: str | None = None
    model: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # backend options
    sampling: Mapping[str, Any] = field(default_factory=dict)  # GenerationRequest sampling fields
    schema: Mapping[str, Any] | None = None
    tools: tuple[str, ...] = ()  # module:function or file.py:function (relative to the template)
    lines: Mapping[tuple, int] = field(default_factory=dict, repr=False, compare=False)
    text: str = field(default="", repr=False, compare=False)  # the file as written

    @property
    def variable_names(self) -> tuple[str, ...]:
        """Every variable the template declares or uses, sorted."""
        return tuple(sorted(set(self.variables) | self.used_variables))

    @property
    def used_variables(self) -> set[str]:
        """The variables `system` and `prompt` refer to."""
        from jinja2 import meta

        used: set[str] = set()
        for key in ("system", "prompt"):
            source = getattr(self, key)
            if source is not None:
                used |= meta.find_undeclared_variables(_environment().parse(source))
        return used

    @property
    def takes_input(self) -> bool:
        """Whether the user turn takes free text (the `input` variable, or no `prompt` at all)."""
        return self.prompt is None or INPUT in self.used_variables

    def render_system(self, variables: Mapping[str, Any] | None = None) -> str | None:
        """The system prompt with `variables` (and defaults) filled in; None if there is none."""
        if self.system is None:
            return None
        return self._render("system", self.system, self._values(variables or {}, "system", self.system))

    def render_prompt(self, variables: Mapping[str, Any] | None = None) -> str:
        """The user turn with `variables` filled in (no `prompt`: the `input` variable itself)."""
        source = self.prompt if self.prompt is not None else "{{ input }}"
        return self._render("prompt", source, self._values(variables or {}, "prompt", source))

    def render(self, variables: Mapping[str, Any] | None = None, *, system: str | None = None,
               **settings: Any) -> GenerationRequest:
        """The request: system message, few-shot turns in order, then the user turn.

        `system` replaces the template's system prompt; `settings` (GenerationRequest fields:
        temperature, max_tokens, stop, ...) override the template's sampling defaults.
        Variables a template does not use are ignored (a test case may carry more columns).
        The template's `backend`, `model` and `options` are not in the request: they say how
        to build the backend it is sent to (`rung prompt -t` uses them unless told otherwise).
        """
        system_text = system if system is not None else self.render_system(variables)
        turns = [Message("system", system_text)] if system_text is not None else []
        turns += [*self.examples, Message("user", self.render_prompt(variables))]
        values: dict[str, Any] = {**self.sampling, **settings}
        return GenerationRequest(messages=tuple(turns), **values)

    def starting_turns(self, variables: Mapping[str, Any] | None = None, *,
                       system: str | None = None) -> list[Message]:
        """What a chat begins with: the system message (if any) and the few-shot turns."""
        system_text = system if system is not None else self.render_system(variables)
        return ([Message("system", system_text)] if system_text is not None else []) + list(self.examples)

    # -- rendering ---------------------------------------------------------------------------

    def _values(self, given: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
        """The given variables over the declared defaults; every variable `source` needs must
        have one, or this is one line naming them all."""
        from jinja2 import meta

        values = {name: var.default for name, var in self.variables.items() if var.default is not None}
        values.update({str(k): v for k, v in given.items()})
        needed = meta.find_undeclared_variables(_environment().parse(source))
        missing = sorted(needed - set(values))
        if key == "prompt" and self.prompt is None and missing:
            raise MissingVariableError(f"{self.path}: template '{self.name}' has no prompt, so it needs the "
                                       f"user's text (the '{INPUT}' variable)", missing)
        if missing:
            where = self._line_of(("variables", missing[0])) or self._source_line(key, _first_use(source, missing[0]))
            said = ", ".join(f"'{name}'" for name in missing)
            plural = "s" if len(missing) > 1 else ""
            raise MissingVariableError(
                f"{self._where(where)}: template '{self.name}' needs the variable{plural} {said}, "
                f"given no value and with no default", missing)
        return values

    def _render(self, key: str, source: str, values: Mapping[str, str]) -> str:
        from jinja2 import TemplateError, UndefinedError

        filename = f"{self.path}#{key}"
        try:
            compiled = _environment().compile(source, name=self.name, filename=filename)
            template = _environment().template_class.from_code(_environment(), compiled,
                                                               _environment().make_globals(None))
            return template.render(values)
        except UndefinedError as exc:
            line = self._source_line(key, _template_line(exc, filename))
            raise ConfigError(f"{self._where(line)}: template '{self.name}': {exc.message} "
                              f"(in its {key})") from None
        except TemplateError as exc:  # syntax errors are found at load; this is the rest (sandbox...)
            line = self._source_line(key, getattr(exc, "lineno", None) or _template_line(exc, filename))
            raise ConfigError(f"{self._where(line)}: template '{self.name}': {exc.message or exc} "
                              f"(in its {key})") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            line = self._source_line(key, _template_line(exc, filename))
            raise ConfigError(f"{self._where(line)}: template '{self.name}' failed to render its {key}: "
                              f"{type(exc).__name__}: {exc}") from None

    def _line_of(self, key: tuple) -> int | None:
        return self.lines.get(key)

    def _source_line(self, key: str, template_line: int | None) -> int | None:
        return _file_line(self.text, self.lines, key, template_line)

    def _where(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)


# -- finding and loading -------------------------------------------------------------------------

def templates_dir() -> Path:
    """The user's templates folder: `templates/` in the rung config directory (not created)."""
    return config_dir() / "templates"


def list_templates(search: Iterable[str | Path] = ()) -> list[tuple[str, Path]]:
    """(name, path) of every template in `search` folders and the user's templates folder,
    sorted by name; a name in an earlier folder hides the same name in a later one."""
    found: dict[str, Path] = {}
    for folder in [*map(Path, search), templates_dir()]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.is_file() and NAME_PATTERN.match(path.stem):
                found.setdefault(path.stem, path)
    return sorted(found.items())


def template_path(name_or_path: str | Path, search: Iterable[str | Path] = ()) -> Path:
    """Where the template `name_or_path` is: an existing file, or NAME(.yaml|.yml) in the
    `search` folders and then the templates folder. Unknown: one line saying where it looked."""
    text = str(name_or_path)
    given = Path(text).expanduser()
    looks_like_path = "/" in text or "\\" in text or given.suffix in SUFFIXES
    if given.is_file():
        return given
    if looks_like_path:
        raise ConfigError(f"{given}: no such template file")
    if not NAME_PATTERN.match(text):
        raise ConfigError(f"{excerpt(text)} is not a template name (letters, digits, '_', '-', '.') "
                          f"or the path of a template file")
    folders = [*map(Path, search), templates_dir()]
    for folder in folders:
        for suffix in SUFFIXES:
            candidate = folder / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
    known = [name for name, _ in list_templates(search)]
    close = difflib.get_close_matches(text, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else (
        f"; templates there: {', '.join(known)}" if known else "; there are none (rung templates edit NAME makes one)")
    where = ", ".join(str(f) for f in folders)
    raise ConfigError(f"unknown template '{text}': no {text}.yaml in {where}{hint}")


def load_template(name_or_path: str | Path, search: Iterable[str | Path] = ()) -> PromptTemplate:
    """The template named (or at the path) `name_or_path`, read and checked (see the module)."""
    from rung.yaml_lines import load_yaml_with_lines

    path = template_path(name_or_path, search)
    data, lines = load_yaml_with_lines(path)
    text = path.read_text(encoding="utf-8")
    return _parse(path.stem, path, data, lines, text)


def parse_template(text: str, name: str = "template", path: str | Path = "<template>") -> PromptTemplate:
    """A template from YAML text (errors name `path`), as `load_template` reads a file."""
    from rung.yaml_lines import load_yaml_text

    data, lines = load_yaml_text(text, str(path))
    return _parse(name, Path(path), data, lines, text)


def starter_template(name: str) -> str:
    """The text `rung templates edit NAME` starts a new template from."""
    return STARTER.format(name=name)


# -- checking ------------------------------------------------------------------------------------

def _parse(name: str, path: Path, data: Any, lines: Mapping[tuple, int], text: str) -> PromptTemplate:
    def fail(key: tuple, message: str) -> ConfigError:
        line = lines.get(key)
        dotted = ".".join(str(k) for k in key)
        return ConfigError(f"{path}:{line}: {dotted}: {message}" if line else f"{path}: {dotted}: {message}")

    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a template is a YAML mapping (system, prompt, examples, ...), "
                          f"not {type(data).__name__}")
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(KEYS)}"
            raise fail((str(key),), f"unknown template key{hint}")
    if data.get("system") is None and data.get("prompt") is None and not data.get("examples"):
        raise ConfigError(f"{path}: template '{name}' has no system, prompt or examples: nothing to send")

    def text_of(key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise fail((key,), f"expected text, got {type(value).__name__} {excerpt(value)}")
        return value

    def mapping_of(key: str) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail((key,), f"expected a mapping, got {type(value).__name__}")
        return {str(k): v for k, v in value.items()}

    system, prompt = text_of("system"), text_of("prompt")
    for key, source in (("system", system), ("prompt", prompt)):
        if source is not None:
            _check_syntax(source, key, path, lines, text)
    template = PromptTemplate(
        name=name, path=path, system=system, prompt=prompt,
        examples=_examples(data.get("examples"), fail),
        variables=_variables(mapping_of("variables"), fail),
        description=text_of("description") or "",
        backend=text_of("backend"), model=text_of("model"), options=mapping_of("options"),
        sampling=_sampling(data, fail), schema=_schema(data.get("schema"), fail),
        tools=_tools(data.get("tools"), path.parent, fail), lines=dict(lines), text=text,
    )
    return template


def _examples(value: Any, fail: Any) -> tuple[Message, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise fail(("examples",), "expected a list of turns: - {user: ..., assistant: ...} "
                                  "or - {role: ..., content: ...}")
    turns: list[Message] = []
    for index, item in enumerate(value):
        key = ("examples", index)
        if not isinstance(item, dict):
            raise fail(key, f"expected {{user: ..., assistant: ...}} or {{role: ..., content: ...}}, got "
                            f"{type(item).__name__} {excerpt(item)}")
        keys = set(map(str, item))
        if keys <= {"role", "content"} and "role" in keys:
            role, content = item.get("role"), item.get("content")
            if role not in ("user", "assistant"):
                raise fail((*key, "role"), f"role must be user or assistant, not {excerpt(role)}")
            pairs = [(str(role), content, "content")]
        elif keys and keys <= {"user", "assistant"}:
            pairs = [(role, item[role], role) for role in ("user", "assistant") if role in item]
        else:
            raise fail(key, f"an example turn has user and/or assistant, or role and content; got keys "
                            f"{', '.join(sorted(keys)) or 'none'}")
        for role, content, field_name in pairs:
            if not isinstance(content, str):
                raise fail((*key, field_name), f"expected text, got {type(content).__name__} {excerpt(content)}")
            turns.append(Message(role, content[:-1] if content.endswith("\n") else content))  # type: ignore[arg-type]
    return tuple(turns)


def _variables(value: dict[str, Any], fail: Any) -> dict[str, Variable]:
    variables: dict[str, Variable] = {}
    for name, spec in value.items():
        key = ("variables", name)
        if not name.isidentifier():
            raise fail(key, "a variable name is a Python-style identifier (letters, digits, _)")
        if isinstance(spec, dict):
            unknown = set(map(str, spec)) - {"default", "description"}
            if unknown:
                raise fail(key, f"unknown key {sorted(unknown)[0]!r} (a variable has default and description)")
            default, description = spec.get("default"), spec.get("description") or ""
        else:
            default, description = spec, ""
        if default is not None and not isinstance(default, (str, int, float, bool)):
            raise fail(key, f"a default is text (or a number), got {type(default).__name__}")
        if not isinstance(description, str):
            raise fail((*key, "description"), "expected text")
        variables[name] = Variable(name, None if default is None else str(default), description)
    return variables


def _sampling(data: Mapping[str, Any], fail: Any) -> dict[str, Any]:
    kinds = {"temperature": (int, float), "top_p": (int, float), "top_k": (int,), "max_tokens": (int,),
             "seed": (int,)}
    out: dict[str, Any] = {}
    for key, types in kinds.items():
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = "a number" if float in types else "an integer"
            raise fail((key,), f"expected {wanted}, got {excerpt(value)}")
        out[key] = float(value) if float in types else value
    stop = data.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise fail(("stop",), "expected a stop string or a list of them")
        out["stop"] = tuple(stops)
    return out


def _schema(value: Any, fail: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(("schema",), f"expected a JSON schema (a mapping), got {type(value).__name__}")
    return value


def _tools(value: Any, folder: Path, fail: Any) -> tuple[str, ...]:
    """Tool references as `rung prompt --tool` takes them; a relative `file.py:function` is
    relative to the template's folder, so a template and its tools move together."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise fail(("tools",), "expected a list of tools: module:function or file.py:function")
    tools: list[str] = []
    for index, tool in enumerate(value):
        if not isinstance(tool, str) or ":" not in tool:
            raise fail(("tools", index), f"a tool is module:function or file.py:function, got {excerpt(tool)}")
        module, _, function = tool.rpartition(":")
        if module.endswith(".py") and not Path(module).expanduser().is_absolute():
            tool = f"{folder / module}:{function}"
        tools.append(tool)
    return tuple(tools)


# -- Jinja -----------------------------------------------------------------------------------------

_ENVIRONMENT: Any = None


def _environment() -> Any:
    """One sandboxed Jinja environment: strict undefined, no autoescape (this is not HTML)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        from jinja2 import StrictUndefined
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        _ENVIRONMENT = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    return _ENVIRONMENT


def _check_syntax(source: str, key: str, path: Path, lines: Mapping[tuple, int], text: str) -> None:
    from jinja2 import TemplateSyntaxError

    try:
        _environment().parse(source)
    except TemplateSyntaxError as exc:
        line = _file_line(text, lines, key, exc.lineno)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {key}: bad Jinja template: {exc.message}") from None


def _first_use(source: str, name: str) -> int | None:
    """The template line where the variable `name` is first read."""
    from jinja2 import nodes

    for node in _environment().parse(source).find_all(nodes.Name):
        if node.name == name and node.ctx == "load":
            return node.lineno
    return None


def _template_line(exc: BaseException, filename: str) -> int | None:
    """The template line an error came from, from the frames Jinja writes for its templates."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            found = tb.tb_lineno
        tb = tb.tb_next
    return found


def _file_line(text: str, lines: Mapping[tuple, int], key: str, template_line: int | None) -> int | None:
    """The file line of line `template_line` of the text under `key`: a block scalar (`key: |`)
    starts on the next line, an inline one on the key's own (folded text is approximate)."""
    start = lines.get((key,))
    if start is None or not template_line:
        return start
    file_lines = text.splitlines()
    after = file_lines[start - 1].split(":", 1)[-1].strip() if start <= len(file_lines) else ""
    block = after[:1] in ("|", ">")
    return start + template_line if block else start + template_line - 1
