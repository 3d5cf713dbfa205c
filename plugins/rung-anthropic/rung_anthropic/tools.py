"""Tool calls in the Anthropic Messages wire format.

Out: ``tools`` as ``{name, description, input_schema}``, ``tool_choice`` (``{"type": "auto"}``,
``{"type": "none"}``, ``{"type": "any"}`` for "required", ``{"type": "tool", "name"}`` for one
tool), an assistant turn's calls as ``tool_use`` content blocks (after its text, if any), and
the results of one round as ``tool_result`` blocks of one user turn (an ``error: ...`` result,
as `rung.tools` writes a failed call's, also says ``is_error``).
In: ``tool_use`` content blocks become `ToolCall`s, their ``input`` as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rung.hosted import APIError
from rung.records import GenerationRequest, Message, ToolCall

CHOICES = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


def wire_messages(messages: Sequence[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, messages) as ``messages.create`` takes them."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
        elif m.role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content}
            if m.content.startswith("error: "):
                block["is_error"] = True
            previous = out[-1] if out else None
            if previous is not None and previous["role"] == "user" and isinstance(previous["content"], list) and all(
                    b.get("type") == "tool_result" for b in previous["content"]):
                previous["content"].append(block)  # one user turn holds every result of a round
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            for call in m.tool_calls:
                try:
                    arguments = call.parsed_arguments()
                except ValueError:
                    arguments = None
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                               "input": arguments if isinstance(arguments, dict) else {}})
            out.append({"role": "assistant", "content": blocks})
        elif m.role in ("user", "assistant"):
            out.append({"role": m.role, "content": m.content})
        else:
            raise APIError(f"anthropic: a '{m.role}' message cannot be sent as plain text; use user and assistant "
                           "turns", "unsupported")
    return system, out


def tool_params(request: GenerationRequest) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` parameters of `request` (none without tools)."""
    if not request.tools:
        return {}
    params: dict[str, Any] = {"tools": [
        {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)} for t in request.tools
    ]}
    choice = request.tool_choice
    if choice is not None:
        params["tool_choice"] = CHOICES.get(choice) or {"type": "tool", "name": choice}
    return params


def tool_calls_of(content: Any) -> tuple[ToolCall, ...]:
    """The ``tool_use`` blocks of a response's content."""
    return tuple(ToolCall(block.id, block.name, json.dumps(block.input or {}, ensure_ascii=False))
                 for block in content or () if getattr(block, "type", None) == "tool_use")
