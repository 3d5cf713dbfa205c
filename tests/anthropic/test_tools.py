"""Tool calls through rung-anthropic against the fake server: the Messages wire format (tools
with input_schema, tool_choice, tool_use blocks, tool_result blocks) and rung.tools' loop."""

import pytest

import rung
from rung.records import GenerationRequest, Message
from rung.tools import MaxRoundsError, run_tools, tool
from tests.fake_llm_server import TEST_KEY as KEY


def make(server):
    return rung.backend("anthropic", model="claude-test", api_key=KEY, base_url=server.anthropic_base_url,
                        max_retries=0, timeout=5)


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


ASK = GenerationRequest(messages=(Message("user", "what is 2 + 3?"),), system="use the tools", max_tokens=30)


def test_a_tool_call_round_trip_sends_tool_use_and_tool_result_blocks(server):
    server.ask_tool("add", {"a": 2, "b": 3})
    results = []
    done = run_tools(make(server), ASK, [add], on_result=results.append)
    assert done.text == "tool said: 5" and done.finish_reason == "stop"
    first, second = (r.body for r in server.requests)
    assert first["tools"] == [{"name": "add", "description": "Add two numbers.", "input_schema": {
        "type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "integer", "description": "the first number"},
            "b": {"type": "integer", "description": "the second number"}}}}]
    call_id = results[0].call.id
    assert call_id.startswith("toolu_fake_") and results[0].call.arguments == '{"a": 2, "b": 3}'
    assert second["system"] == "use the tools"
    assert second["messages"] == [
        {"role": "user", "content": "what is 2 + 3?"},
        {"role": "assistant",
         "content": [{"type": "tool_use", "id": call_id, "name": "add", "input": {"a": 2, "b": 3}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "5"}]},
    ]


def test_the_results_of_one_round_share_a_user_turn_and_errors_say_so(server):
    server.ask_tools(("add", {"a": 1, "b": 2}), ("divide", {"a": 1, "b": 0}))
    results = []
    done = run_tools(make(server), ASK, [add, divide], on_result=results.append)
    assert [r.output for r in results] == ["3", "error: ZeroDivisionError: float division by zero"]
    assert done.text == "tool said: 3; error: ZeroDivisionError: float division by zero"
    last = server.requests[-1].body["messages"][-1]
    ids = [r.call.id for r in results]
    assert last == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": ids[0], "content": "3"},
        {"type": "tool_result", "tool_use_id": ids[1], "content": "error: ZeroDivisionError: float division by zero",
         "is_error": True}]}


def test_tool_choice_maps_to_the_messages_api(server):
    backend, specs = make(server), (tool(add).spec, tool(divide).spec)
    sent = []
    for choice in ("auto", "none", "required", "divide"):
        backend.generate(GenerationRequest(messages=(Message("user", "hi"),), tools=specs, tool_choice=choice))
        sent.append(server.requests[-1].body["tool_choice"])
    assert sent == [{"type": "auto"}, {"type": "none"}, {"type": "any"}, {"type": "tool", "name": "divide"}]
    server.ask_tool("divide", {"a": 6, "b": 3})
    done = backend.generate(GenerationRequest(messages=(Message("user", "6/3"),), tools=specs))
    assert done.finish_reason == "tool_calls" and [c.name for c in done.tool_calls] == ["divide"]


def test_max_rounds_exceeded_is_one_line(server):
    server.ask_tool("add", {"a": 1, "b": 1})
    with pytest.raises(MaxRoundsError, match=r"^tools: the model still asks for tool calls \(add\) after 0 rounds"):
        run_tools(make(server), ASK, [add], max_rounds=0)

