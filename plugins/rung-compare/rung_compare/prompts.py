"""A suite's prompts, and how one renders a test case's variables into a GenerationRequest.

A prompt is Jinja text (`"Summarise: {{text}}"`, as promptfoo's `{{var}}` prompts), a file of
it (`file://prompt.txt`), a chat (`{messages: [{role, content}], label}`), or a rung prompt
template (`{template: NAME_OR_PATH}`, rung.prompt_templates). Variables a prompt uses and a
test case lacks are errors, never empty text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rung.errors import ConfigError
from rung.records import GenerationRequest, Message

ROLES = ("system", "user", "assistant")


@lru_cache(maxsize=1)
def jinja() -> Any:
    """The Jinja environment prompts, assertion values and judge prompts render in: sandboxed,
    a missing variable an error."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


def compile_text(text: str, where: str) -> Any:
    """`text` as a Jinja template; a syntax error is one line naming `where`."""
    from jinja2 import TemplateSyntaxError

    try:
        return jinja().from_string(text)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"{where}: bad Jinja (line {exc.lineno} of the text): {exc.message}") from None


def render_text(template: Any, variables: Mapping[str, Any], where: str, case_where: str) -> str:
    """`template` rendered with `variables`; an undefined variable names the prompt and the case."""
    from jinja2 import TemplateError

    try:
        return template.render(**variables)
    except TemplateError as exc:
        raise ConfigError(f"{where}: {exc.message or type(exc).__name__} (test case {case_where})") from None


@dataclass(frozen=True)
class Prompt:
    """One prompt of the suite: chat turns of Jinja text, or a rung prompt template."""

    label: str
    where: str  # file:line: prompts[i]
    turns: tuple[tuple[str, Any], ...] = ()  # (role, compiled Jinja)
    template: Any = None  # a rung.prompt_templates template, when the prompt names one
    source: str = ""  # the text as written (the report shows it)

    def render(self, variables: Mapping[str, Any], sampling: Mapping[str, Any], case_where: str) -> GenerationRequest:
        """The request this prompt makes for one test case's variables."""
        if self.template is not None:
            try:  # the suite's sampling overrides the template's defaults; the backend picks the model
                return self.template.render(dict(variables), **_fields(sampling))
            except ConfigError as exc:
                raise ConfigError(f"{self.where}: {exc} (test case {case_where})") from None
        messages = [Message(role, render_text(t, variables, self.where, case_where)) for role, t in self.turns]
        system = None
        if messages and messages[0].role == "system":
            system, messages = messages[0].content, messages[1:]
        if not messages:
            raise ConfigError(f"{self.where}: the prompt has no user turn")
        return GenerationRequest(messages=tuple(messages), system=system, **_fields(sampling))


def _fields(sampling: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in sampling.items() if v is not None}
    if "stop" in out:
        out["stop"] = tuple(out["stop"])
    return out


def parse_prompt(raw: Any, where: str, index: int, base_dir: Path) -> Prompt:
    """A `prompts:` entry as a Prompt (`where` is its file:line: prompts[i])."""
    if isinstance(raw, str):
        text = read_file_ref(raw, base_dir, where) if raw.startswith("file://") else raw
        label = raw[len("file://"):] if raw.startswith("file://") else short_label(text, index)
        return Prompt(label, where, (("user", compile_text(text, where)),), source=text)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a prompt is text or a mapping (label, text/messages/template), "
                          f"not {type(raw).__name__}")
    allowed = {"label", "text", "system", "messages", "template"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown prompt key; allowed: {', '.join(sorted(allowed))}")
    given = [k for k in ("text", "messages", "template") if k in raw]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of text, messages, template")
    label = raw.get("label")
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"{where}.label: a label is text")
    if "template" in raw:
        return _template_prompt(raw, where, index, base_dir)
    turns: list[tuple[str, str]] = []
    if raw.get("system") is not None:
        turns.append(("system", str(raw["system"])))
    if "text" in raw:
        text = raw["text"]
        if not isinstance(text, str):
            raise ConfigError(f"{where}.text: the prompt text is a string")
        text = read_file_ref(text, base_dir, where) if text.startswith("file://") else text
        turns.append(("user", text))
    else:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"{where}.messages: a list of {{role, content}} turns")
        for i, turn in enumerate(messages):
            if not isinstance(turn, Mapping) or set(turn) != {"role", "content"} or turn["role"] not in ROLES:
                raise ConfigError(f"{where}.messages[{i}]: a turn is {{role: system|user|assistant, content: TEXT}}")
            turns.append((turn["role"], str(turn["content"])))
        if turns[-1][0] != "user":
            raise ConfigError(f"{where}.messages: the last turn is the user's (the model answers it)")
    source = "\n".join(f"{role}: {text}" if len(turns) > 1 else text for role, text in turns)
    compiled = tuple((role, compile_text(text, f"{where}")) for role, text in turns)
    return Prompt(label or short_label(turns[-1][1], index), where, compiled, source=source)


def _template_prompt(raw: Mapping[str, Any], where: str, index: int, base_dir: Path) -> Prompt:
    try:
        from rung.prompt_templates import load_template
    except ImportError:
        raise ConfigError(f"{where}.template: this rung has no prompt templates (rung.prompt_templates); "
                          "write the prompt as text") from None
    name = str(raw["template"])
    try:  # a name is looked for beside the suite first, then in the templates folder
        template = load_template(name, search=[base_dir])
    except ConfigError as exc:
        raise ConfigError(f"{where}.template: {exc}") from None
    return Prompt(raw.get("label") or name, where, template=template, source=f"template: {name}")


def read_file_ref(ref: str, base_dir: Path, where: str) -> str:
    """The text of a `file://path` reference (relative to the suite's folder)."""
    path = Path(ref[len("file://"):])
    path = path if path.is_absolute() else base_dir / path
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {path}: cannot read it as UTF-8 text ({exc})") from None


def short_label(text: str, index: int) -> str:
    """A prompt's label when it has none: its first line, cut to 40 characters."""
    first = " ".join(text.split())
    if not first:
        return f"prompt {index + 1}"
    return first if len(first) <= 40 else first[:37] + "..."
