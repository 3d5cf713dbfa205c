"""Tool calls in OpenAI's chat-completions wire format.

Out: ``tools`` as ``{"type": "function", "function": {name, description, parameters}}``,
``tool_choice`` ("auto", "none", "required", or ``{"type": "function", "function": {"name"}}``
for one tool), an assistant turn's calls as ``tool_calls`` (its content None when it said
nothing), and each result as a ``tool`` message with its ``tool_call_id``.
In: ``message.tool_calls`` (function calls) become `ToolCall`s, arguments as the JSON text sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rung.records import GenerationRequest, Message, ToolCall

CHOICES = ("auto", "none", "required")


def wire_message(m: Message) -> dict[str, Any]:
    """One message as chat completions takes it."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
    if m.role == "assistant" and m.tool_calls:
        return {
            "role": "assistant",
            "content": m.content or None,
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in m.tool_calls],
        }
    return {"role": m.role, "content": m.content}


def wire_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [wire_message(m) for m in messages]


def tool_params(request: GenerationRequest) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` parameters of `request` (none without tools)."""
    if not request.tools:
        return {}
    params: dict[str, Any] = {"tools": [
        {"type": "function", "function": {"name": t.name, "description": t.description,
                                          "parameters": dict(t.parameters)}}
        for t in request.tools
    ]}
    choice = request.tool_choice
    if choice is not None:
        params["tool_choice"] = choice if choice in CHOICES else {"type": "function", "function": {"name": choice}}
    return params


def tool_calls_of(message: Any) -> tuple[ToolCall, ...]:
    """The function calls an SDK response message asks for."""
    calls = []
    for call in getattr(message, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        if function is None:  # a custom (non-function) tool call: not one rung declared
            continue
        calls.append(ToolCall(call.id, function.name, function.arguments or "{}"))
    return tuple(calls)
