"""Chat templates of rung's tokenizers: none unless one is given or learnt, rendered as transformers does.

A tokenizer trained on a corpus knows nothing of conversations, so by default it has no chat
template and a model built on it continues text (`rung.decoding.prompt`). A template is
given with the `chat_template` option (`rung`, for rung's own format below, or Jinja text),
or set by a trainer that teaches a chat format (`tokenizer.chat_template = jinja`); it is
saved in tokenizer_config.json, where transformers reads it too.

rung's own format::

    <|system|>\\n{content}<|end|>\\n<|user|>\\n{content}<|end|>\\n<|assistant|>\\n{content}<|end|>\\n

one block per message (`<|ROLE|>`, a newline, the content, `<|end|>`, a newline); with
`add_generation_prompt` the prompt ends with `<|assistant|>\\n`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from rung.errors import ConfigError
from rung.records import Message

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
NAMED = {"rung": CHAT_TEMPLATE}


def resolve_template(value: str | None, where: str = "tokenizer.chat_template") -> str | None:
    """The Jinja text an option names: None, `rung`, or a template (checked to compile)."""
    if not value:
        return None
    if value in NAMED:
        return NAMED[value]
    if "{" not in value:
        raise ConfigError(f"{where}: unknown template '{value}'; use one of: {', '.join(NAMED)}, or Jinja text")
    _compiled(value, where)
    return value


@lru_cache(maxsize=16)
def _compiled(source: str, where: str = "chat template") -> Any:
    """The template compiled as transformers compiles chat templates (sandboxed, trimmed blocks)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{where}: not a valid Jinja template ({exc})") from None


def render(source: str, messages: Sequence[Message | Mapping[str, str]], add_generation_prompt: bool,
           tokens: Mapping[str, str | None]) -> str:
    """`messages` through the template; `tokens` are the bos_token/eos_token/pad_token texts."""
    turns = [{"role": str(m["role"]), "content": str(m["content"])} if isinstance(m, Mapping)
             else {"role": m.role, "content": m.content} for m in messages]
    return _compiled(source).render(messages=turns, add_generation_prompt=add_generation_prompt, **tokens)
