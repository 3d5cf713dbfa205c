"""Tool calls through rung-openai against the fake server: the chat-completions wire format
(tools, tool_choice, an assistant turn's tool_calls, tool messages) and rung.tools' loop."""

import json
from typing import Literal

import pytest

import rung
from rung.records import GenerationRequest, Message, ToolCall
from rung.tools import MaxRoundsError, run_tools, tool
from tests.fake_llm_server import TEST_KEY as KEY


def make(server):
    return rung.backend("openai", model="gpt-test", api_key=KEY, base_url=server.openai_base_url, max_retries=0,
                        timeout=5)


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def convert(value: float, unit: Literal["km", "mi"] = "km") -> str:
    """Say a distance in a unit."""
    return f"{value:g} {unit}"


ASK = GenerationRequest(messages=(Message("user", "what is 2 + 3?"),), system="use the tools", max_tokens=30)


def test_a_tool_call_round_trip_sends_the_call_and_its_result_back(server):
    server.ask_tool("add", {"a": 2, "b": 3})
    results = []
    done = run_tools(make(server), ASK, [add, convert], on_result=results.append)
    assert done.text == "tool said: 5" and done.finish_reason == "stop" and done.tool_calls == ()
    assert [(r.call.name, r.call.arguments, r.output, r.is_error) for r in results] == [
        ("add", '{"a": 2, "b": 3}', "5", False)]
    first, second = (r.body for r in server.requests)
    # the tools go out in the function format, schema from the signature and docstring
    assert first["tools"][0] == {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "integer", "description": "the first number"},
            "b": {"type": "integer", "description": "the second number"}}}}}
    assert first["tools"][1]["function"]["parameters"]["properties"]["unit"]["enum"] == ["km", "mi"]
    call_id = results[0].call.id
    assert call_id.startswith("call_fake_")
    assert second["messages"] == [
        {"role": "system", "content": "use the tools"},
        {"role": "user", "content": "what is 2 + 3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "5"},
    ]
    assert second["tools"] == first["tools"]  # offered again: the model may call more
    # usage sums both rounds: the fake counts a word a token (system 3 + user 5; then + the result 1)
    assert done.usage.prompt_tokens == (3 + 5) + (3 + 5 + 1)
    assert done.usage.completion_tokens > len("tool said: 5".split())


def test_generate_reads_several_calls_of_one_reply(server):
    server.ask_tools(("add", {"a": 1, "b": 1}), ("convert", {"value": 2.5}))
    request = GenerationRequest(messages=(Message("user", "go"),), tools=(tool(add).spec, tool(convert).spec),
                                tool_choice="required")
    done = make(server).generate(request)
    assert done.finish_reason == "tool_calls" and done.text == ""
    assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("add", {"a": 1, "b": 1}), ("convert", {"value": 2.5})]
    assert server.requests[-1].body["tool_choice"] == "required"
    make(server).generate(GenerationRequest(messages=(Message("user", "go"),), tools=request.tools,
                                            tool_choice="convert"))
    assert server.requests[-1].body["tool_choice"] == {"type": "function", "function": {"name": "convert"}}


def test_without_tools_nothing_about_tools_is_sent(server):
    server.ask_tool("add", {"a": 1, "b": 2})  # the fake only asks a request that offers tools
    done = make(server).generate(GenerationRequest(messages=(Message("user", "hi"),)))
    assert done.text == "echo: hi" and done.tool_calls == ()
    assert "tools" not in server.requests[-1].body and "tool_choice" not in server.requests[-1].body


def test_a_tool_that_raises_becomes_its_result_and_the_loop_goes_on(server):
    def lookup(key: str) -> str:
        """Find a key."""
        raise KeyError(f"no entry {key}")

    server.ask_tool("lookup", {"key": "k1"})
    results = []
    done = run_tools(make(server), ASK, [lookup], on_result=results.append)
    assert results[0].is_error and results[0].output == "error: KeyError: 'no entry k1'"
    assert done.text == "tool said: error: KeyError: 'no entry k1'"
    assert server.requests[-1].body["messages"][-1]["content"] == "error: KeyError: 'no entry k1'"


def test_bad_arguments_and_unknown_tools_are_results_too(server):
    server.ask_tools(("add", {"a": "two", "b": 3}), ("subtract", {"a": 1}))
    results = []
    run_tools(make(server), ASK, [add], on_result=results.append)
    assert [r.is_error for r in results] == [True, True]
    assert results[0].output.startswith("error: invalid arguments for add: a: ")
    assert results[1].output == "error: no tool named subtract; the tools are add"
    tool_turns = [m for m in server.requests[-1].body["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_turns] == [r.output for r in results]


def test_max_rounds_stops_a_model_that_keeps_calling(server):
    for _ in range(3):
        server.ask_tool("add", {"a": 1, "b": 1})
    with pytest.raises(MaxRoundsError) as caught:
        run_tools(make(server), ASK, [add], max_rounds=2)
    assert str(caught.value) == ("tools: the model still asks for tool calls (add) after 2 rounds; raise max_rounds "
                                 "(rung prompt --max-rounds N)")
    assert [r.round for r in caught.value.results] == [1, 2] and len(server.requests) == 3
    server.reset()
    server.ask_tool("add", {"a": 1, "b": 1})
    assert run_tools(make(server), ASK, [add], max_rounds=1).text == "tool said: 2"


def test_a_tool_call_message_round_trips_without_the_loop(server):
    """A caller may build the conversation itself: the records carry the call and result."""
    call = ToolCall("call_x", "add", '{"a": 4, "b": 4}')
    messages = (Message("user", "4+4?"), Message("assistant", "let me add", tool_calls=(call,)),
                Message("tool", "8", tool_call_id="call_x", name="add"))
    done = make(server).generate(GenerationRequest(messages=messages, tools=(tool(add),)))
    assert done.text == "tool said: 8"
    assert server.requests[-1].body["messages"][1]["content"] == "let me add"
