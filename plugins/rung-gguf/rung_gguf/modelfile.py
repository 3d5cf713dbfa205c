"""The Ollama `Modelfile` written beside the GGUF file (`ollama create NAME -f Modelfile`).

Ollama formats a conversation with a Go template, not the Jinja chat template the tokenizer
carries. When the chat template is simple (each message is a fixed prefix, the content, a fixed
suffix; a fixed generation prompt at the end) that shape is read off the template by rendering
it with marker contents, checked on a whole conversation, and written as a Go template. A
template that does anything else (conditions on content, loops over tools, ...) gets the plain
default, `{{ .Prompt }}`, so the model continues the text it is given. Stop parameters are
the end-of-text token and the token that ends an assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung_gguf.vocab import CONTROL, Vocab

ROLES = ("system", "user", "assistant")
PLAIN_TEMPLATE = "{{ .Prompt }}"


@dataclass(frozen=True)
class ChatFormat:
    """A chat template's fixed text: before every conversation, around each role's content, at the end."""

    header: str
    wrappers: dict[str, tuple[str, str]]
    generation_prompt: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """The conversation in this format, with the generation prompt (what the Jinja template gives)."""
        body = "".join(self.wrappers[m["role"]][0] + m["content"] + self.wrappers[m["role"]][1] for m in messages)
        return self.header + body + self.generation_prompt

    def go_template(self) -> str:
        """The same format as an Ollama (Go text/template) TEMPLATE, on one line so no whitespace is trimmed."""
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{pre}{{{{ .Content }}}}{post}'
            for i, (role, (pre, post)) in enumerate(self.wrappers.items()))
        return f"{self.header}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation_prompt}"


def chat_format(template: str | None, vocab: Vocab) -> ChatFormat | None:
    """The template's fixed shape, or None when it has none (or cannot be rendered here)."""
    if not template:
        return None
    try:
        render = _renderer(template, vocab)
        header = render([], False)
        wrappers = {}
        for role in ROLES:
            marker = f"\u27e6{role} content\u27e7"
            text = render([{"role": role, "content": marker}], False)
            if not text.startswith(header) or text.count(marker) != 1:
                return None
            pre, post = text[len(header):].split(marker)
            wrappers[role] = (pre, post)
        ask = [{"role": "user", "content": "\u27e6question\u27e7"}]
        with_prompt, without = render(ask, True), render(ask, False)
        if not with_prompt.startswith(without):
            return None
        found = ChatFormat(header, wrappers, with_prompt[len(without):])
        conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
        if render(conversation, True) != found.render(conversation):
            return None
    except Exception:  # a template that raises on some conversation is not a fixed shape
        return None
    pieces = [found.header, found.generation_prompt, *(p for pair in wrappers.values() for p in pair)]
    if any("{{" in p or "}}" in p or '"""' in p for p in pieces):
        return None  # would need escaping in Go or the Modelfile
    return found


def end_of_turn_token(found: ChatFormat | None, vocab: Vocab) -> str | None:
    """The control token that closes an assistant message in this format (`<|end|>`, `<|im_end|>`, ...)."""
    if found is None:
        return None
    suffix = found.wrappers["assistant"][1]
    controls = [t for t, kind in zip(vocab.tokens, vocab.token_types) if kind == CONTROL and t in suffix]
    return min(controls, key=suffix.index) if controls else None


def modelfile_text(gguf_file: Path, vocab: Vocab, found: ChatFormat | None) -> str:
    """The Modelfile: FROM the GGUF file beside it, TEMPLATE, and stop parameters."""
    template = found.go_template() if found is not None else PLAIN_TEMPLATE
    stops = [t for t in (end_of_turn_token(found, vocab), vocab.special_text.get("eos")) if t]
    lines = [f"FROM ./{gguf_file.name}", "", f'TEMPLATE """{template}"""', ""]
    lines += [f'PARAMETER stop "{_quoted(s)}"' for s in dict.fromkeys(stops)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _renderer(template: str, vocab: Vocab) -> Any:
    """render(messages, add_generation_prompt) as transformers renders chat templates. bos_token is
    empty when llama.cpp adds it itself (add_bos), so the template text does not add a second one."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    tokens = {"bos_token": "" if vocab.add_bos else vocab.special_text.get("bos", ""),
              "eos_token": vocab.special_text.get("eos", ""), "pad_token": vocab.special_text.get("pad", "")}

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)

    return render
