"""Chat templates: the tokenizer's own, or one rung ships (`chatml`, `plain`) for tokenizers without.

A template turns a conversation into text. rung's templates are Jinja, in the same form as a
Hugging Face `chat_template` (variables `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`), so the template a model was trained with is saved beside it and used again
when it is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rung.errors import ConfigError, RungError
from rung.records import Message

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ message['role'] | capitalize }}{{ ': ' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML, "plain": PLAIN}
# Text that ends an assistant turn, per named template (generation stops there too).
STOPS: dict[str, tuple[str, ...]] = {"chatml": ("<|im_end|>",), "plain": ("\nUser:",)}


class ChatRenderer:
    """Renders conversations as text, with the strings that end an assistant turn."""

    def __init__(self, name: str, render: Any, jinja: str | None, stop: Sequence[str]) -> None:
        self.name = name
        self._render = render
        self.jinja = jinja  # saved beside the model as chat_template.jinja when rung's own
        self.stop = tuple(s for s in stop if s)

    def __call__(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return self._render(list(messages), add_generation_prompt)


def _token_text(tokenizer: Any, token_id: int | None) -> str:
    if token_id is None:
        return ""
    for text, tid in dict(getattr(tokenizer, "special_tokens", {}) or {}).items():
        if tid == token_id:
            return text
    return ""


def jinja_renderer(name: str, source: str, tokenizer: Any, stop: Sequence[str] = ()) -> ChatRenderer:
    """A renderer from a Jinja chat template (rung's or the user's)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"trainer.chat_template: not a valid Jinja template ({exc})") from None
    eos = _token_text(tokenizer, getattr(tokenizer, "eos_id", None))
    bos = _token_text(tokenizer, getattr(tokenizer, "bos_id", None))

    def render(messages: list[Message], add_generation_prompt: bool) -> str:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return template.render(messages=turns, add_generation_prompt=add_generation_prompt,
                               eos_token=eos, bos_token=bos)

    renderer = ChatRenderer(name, render, source, tuple(stop) + ((eos,) if eos else ()))
    renderer.stop = tuple(dict.fromkeys((*end_of_turn(renderer, None), *renderer.stop)))
    return renderer


def end_of_turn(renderer: ChatRenderer, tokenizer: Any) -> tuple[str, ...]:
    """The text a template puts after an assistant's reply (`<|im_end|>`, `<|end|>`, ...)."""
    special = _token_text(tokenizer, getattr(tokenizer, "end_of_turn_id", None))
    if special:
        return (special,)
    marker = "\x00rung\x00"
    try:
        turns = [Message("user", "x"), Message("assistant", marker)]
        text = renderer(turns, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this has no marker to find
        return ()
    after = text[text.find(marker) + len(marker):].strip() if marker in text else ""
    return (after,) if after else ()


def tokenizer_has_template(tokenizer: Any) -> bool:
    """Whether the tokenizer brings its own chat template."""
    template = getattr(tokenizer, "chat_template", "unknown")
    if template is None or template == "":
        return False
    if template != "unknown":
        return True
    try:  # no attribute: ask it to render a turn
        tokenizer.apply_chat_template([Message("user", "x")], add_generation_prompt=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable template"
        return False


def make_renderer(choice: str, tokenizer: Any) -> ChatRenderer:
    """The renderer `trainer.chat_template` names: auto, tokenizer, chatml, plain or Jinja text."""
    if choice == "auto":
        choice = "tokenizer" if tokenizer_has_template(tokenizer) else "chatml"
    if choice == "tokenizer":
        if not tokenizer_has_template(tokenizer):
            raise ConfigError(
                "trainer.chat_template: the tokenizer has no chat template; "
                f"choose one of rung's: {', '.join(TEMPLATES)} (or give a Jinja template)"
            )

        def render(messages: list[Message], add_generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

        eos = _token_text(tokenizer, getattr(tokenizer, "eos_id", None))
        renderer = ChatRenderer("tokenizer", render, None, (eos,) if eos else ())
        renderer.stop = tuple(dict.fromkeys((*end_of_turn(renderer, tokenizer), *renderer.stop)))
        return renderer
    if choice in TEMPLATES:
        return jinja_renderer(choice, TEMPLATES[choice], tokenizer, STOPS[choice])
    if "{" not in choice:
        raise ConfigError(
            f"trainer.chat_template: unknown template '{choice}'; "
            f"use auto, tokenizer, {', '.join(TEMPLATES)}, or a Jinja template string"
        )
    return jinja_renderer("custom", choice, tokenizer)


def incremental_error(renderer: ChatRenderer) -> RungError:
    return RungError(
        f"chat template '{renderer.name}' does not render a conversation as a growing prefix "
        "(an earlier turn changes when a later one is added), so assistant tokens cannot be "
        "located; set trainer.chat_template to chatml or plain"
    )
