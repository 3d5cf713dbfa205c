"""rung.tools: a function's signature and docstring as a JSON schema, a call run without
crashing, a local model's calls read from its text, and local backends with and without a
chat template that renders tools (real tiny torch models). The hosted loops run against the
fake API server in tests/openai/test_tools.py and tests/anthropic/test_tools.py."""

from __future__ import annotations

import enum
import json
from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from rung.errors import RungError
from rung.records import GenerationRequest, Message, ToolCall
from rung.tools import LocalToolTemplate, load_tool, parse_docstring, parse_tool_calls, run_tools, tool


class Place(BaseModel):
    city: str
    country: Optional[str] = None


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def forecast(place: Place, days: list[int], unit: Unit = Unit.C, detail: Literal["short", "long"] = "short",
             note: str | None = None) -> dict:
    """The weather ahead for a place.

    Said in the unit asked for.

    Args:
        place: where to look
        days (list[int]): days ahead, 0 is today;
            at most a week.
        unit: degrees in celsius or fahrenheit
        detail: how much to say
        note: anything to add

    Returns:
        the forecast
    """
    return {"city": place.city, "days": days, "unit": unit.value, "detail": detail}


def test_a_typed_function_becomes_a_json_schema_with_its_docstring():
    spec = tool(forecast)
    assert spec.name == "forecast"
    assert spec.description == "The weather ahead for a place.\n\nSaid in the unit asked for."
    schema = spec.parameters
    assert schema["type"] == "object" and schema["required"] == ["place", "days"]
    props = schema["properties"]
    assert props["place"] == {"$ref": "#/$defs/Place", "description": "where to look"}
    assert schema["$defs"]["Place"]["required"] == ["city"]
    assert props["days"] == {"type": "array", "items": {"type": "integer"},
                             "description": "days ahead, 0 is today; at most a week."}
    assert props["unit"]["default"] == "celsius" and schema["$defs"]["Unit"]["enum"] == ["celsius", "fahrenheit"]
    assert props["detail"] == {"type": "string", "enum": ["short", "long"], "default": "short",
                               "description": "how much to say"}
    assert props["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}] and props["note"]["default"] is None
    assert "title" not in json.dumps(schema)  # pydantic's generated titles are left out
    # a Tool is a ToolSpec: requests carrying it stay hashable
    hash(GenerationRequest(prompt="x", tools=(spec,)))
    same = [GenerationRequest(prompt="x", tools=(spec.spec,)) for _ in range(2)]
    assert len(set(same)) == 1


def test_arguments_are_checked_and_converted_before_the_call():
    spec = tool(forecast)
    output, failed = spec.run(ToolCall("c1", "forecast", json.dumps(
        {"place": {"city": "Oslo"}, "days": [0, 1], "unit": "fahrenheit"})))
    assert not failed and json.loads(output) == {"city": "Oslo", "days": [0, 1], "unit": "fahrenheit",
                                                  "detail": "short"}
    output, failed = spec.run(ToolCall("c2", "forecast", '{"place": {"city": "Oslo"}, "days": "soon"}'))
    assert failed and output.startswith("error: invalid arguments for forecast: days: ")
    assert spec.run(ToolCall("c3", "forecast", "{not json")) [1] is True
    assert spec.run(ToolCall("c4", "forecast", "[1, 2]"))[0] == (
        "error: the arguments of forecast must be a JSON object, got list")


def test_sphinx_docstrings_and_decorator_forms():
    @tool(name="lookup_word", description="Look a word up.")
    def lookup(word: str, limit: int = 3) -> list[str]:
        """Ignored summary.

        :param word: the word
        :param int limit: how many senses
        :returns: senses
        """
        return [word] * limit

    assert (lookup.name, lookup.description) == ("lookup_word", "Look a word up.")
    assert lookup.parameters["properties"]["limit"] == {"type": "integer", "default": 3,
                                                        "description": "how many senses"}
    assert lookup.run(ToolCall("x", "lookup_word", '{"word": "a", "limit": 2}')) == ('["a", "a"]', False)
    assert parse_docstring("One line.")[0] == "One line." and parse_docstring(None) == ("", {})


def test_what_a_model_cannot_be_told_is_refused_in_one_line():
    def untyped(x):  # noqa: ANN001
        return x

    def variadic(*values: int) -> int:
        return sum(values)

    with pytest.raises(RungError, match=r"^tool untyped: parameter 'x' has no type annotation"):
        tool(untyped)
    with pytest.raises(RungError, match=r"^tool variadic: \*values cannot be described"):
        tool(variadic)
    with pytest.raises(RungError, match="two tools are named forecast"):
        run_tools(object(), GenerationRequest(prompt="x"), [forecast, forecast])
    with pytest.raises(RungError, match="tools need a chat request"):
        run_tools(object(), GenerationRequest(prompt="x", raw=True), [forecast])


def test_load_tool_finds_a_module_beside_the_user_or_a_file(tmp_path, monkeypatch):
    (tmp_path / "beside_tools.py").write_text("def double(n: int) -> int:\n    '''Twice n.'''\n    return 2 * n\n")
    monkeypatch.chdir(tmp_path)
    assert load_tool("beside_tools:double").description == "Twice n."
    assert load_tool(str(tmp_path / "beside_tools.py") + ":double").run(ToolCall("1", "double", '{"n": 4}'))[0] == "8"
    with pytest.raises(RungError, match=r"^--tool nomodule_here:f: cannot import nomodule_here \(ModuleNotFoundError"):
        load_tool("nomodule_here:f")
    with pytest.raises(RungError, match="^--tool double: expected MODULE:FUNCTION"):
        load_tool("double")


def test_calls_are_read_from_a_local_models_text_by_the_documented_convention():
    names = {"add", "search"}
    text = 'Let me check.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n' \
           '<tool_call>{"name": "search", "arguments": {"q": "x"}}'  # (the last one cut by a stop string)
    reply, calls = parse_tool_calls(text, names, "call_1")
    assert reply == "Let me check."
    assert calls == (ToolCall("call_1_0", "add", '{"a": 1}'), ToolCall("call_1_1", "search", '{"q": "x"}'))
    assert parse_tool_calls('```json\n{"name": "add", "parameters": {"a": 2}}\n```', names)[1] == (
        ToolCall("call_0", "add", '{"a": 2}'),)
    assert parse_tool_calls('[{"name": "add", "arguments": {}}, {"name": "search", "arguments": {}}]',
                            names)[1][1].name == "search"
    # JSON naming no offered tool, and plain text, are answers, not calls
    assert parse_tool_calls('{"name": "Ada", "arguments": {}}', names) == ('{"name": "Ada", "arguments": {}}', ())
    assert parse_tool_calls("just words", names) == ("just words", ())
    # a tagged block that is not JSON still becomes a call, so the model hears what was wrong
    assert parse_tool_calls("<tool_call>oops</tool_call>", names)[1] == (ToolCall("call_0", "?", "oops"),)


# ------------------------------------------------------------------------------ local backends

TOOL_TEMPLATE = (
    "{%- if tools %}<tools>{{ tools | tojson }}</tools>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}<result>{{ m.content }}</result>\n"
    "{%- elif m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}\n"
    "{%- else %}[{{ m.role }}] {{ m.content }}\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture(scope="module")
def transformers_tokenizer():
    """A transformers tokenizer (a small BPE learnt here), wrapped as rung wraps one it loads."""
    pytest.importorskip("transformers")
    import rung
    from rung.transformers_tokenizer import TransformersTokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = rung.tokenizer("bpe", vocab_size=300, min_frequency=1)
    bpe.train(["the weather in oslo is cold and the sum of two numbers is four"] * 20)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe._hf, eos_token="<|endoftext|>")
    return TransformersTokenizer(hf)


def tiny_torch(tokenizer):
    pytest.importorskip("torch")
    import rung

    return rung.backend("torch", tokenizer=tokenizer, model="test", device="cpu", seed=0, max_tokens=8,
                        architecture={"init_std": 0.3, "max_seq_len": 512})


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_a_local_model_without_a_tool_template_refuses_in_one_line(transformers_tokenizer):
    import rung

    request = GenerationRequest(messages=(Message("user", "2+2?"),))
    byte_model = tiny_torch(rung.tokenizer("byte"))  # rung's own template format: no tools
    with pytest.raises(RungError) as caught:
        run_tools(byte_model, request, [add])
    assert str(caught.value) == "backend torch: this model's chat template has no tool support"
    transformers_tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    with pytest.raises(RungError, match="^backend torch: this model's chat template has no tool support$"):
        run_tools(tiny_torch(transformers_tokenizer), request, [add])  # a template that ignores tools


def test_a_local_model_with_a_tool_template_is_prompted_with_the_tools(transformers_tokenizer):
    transformers_tokenizer.chat_template = TOOL_TEMPLATE
    backend = tiny_torch(transformers_tokenizer)
    request = GenerationRequest(messages=(Message("user", "the sum of two numbers"),), temperature=0)
    template = LocalToolTemplate.of(backend)
    rendered = template.render(GenerationRequest(messages=request.messages, tools=(tool(add).spec,)))
    assert rendered.startswith('<tools>[{"type": "function", "function": {"name": "add", "description": '
                               '"Add two numbers."')
    assert rendered.endswith("[user] the sum of two numbers\n[assistant] ")
    history = (*request.messages, Message("assistant", "", tool_calls=(ToolCall("c0", "add", '{"a": 2, "b": 2}'),)),
               Message("tool", "4", tool_call_id="c0", name="add"))
    assert ('\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}</tool_call><result>4</result>[assistant] '
            in template.render(GenerationRequest(messages=history, tools=(tool(add).spec,))))
    # the loop generates from that prompt (greedy: the same text as the prompt sent by hand);
    # this random model writes no call, so its text is the answer
    done = run_tools(backend, request, [add])
    ids = tuple(transformers_tokenizer.encode(rendered))
    by_hand = backend.generate(GenerationRequest(prompt=rendered, prompt_ids=ids, temperature=0))
    assert done.text == by_hand.text and done.tool_calls == () and done.usage.completion_tokens > 0
