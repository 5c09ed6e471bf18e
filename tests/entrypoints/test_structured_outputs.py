"""Structured output and tools over the OpenAI API, through the ``openai`` client: ``response_format``,
vLLM's ``structured_outputs``, ``chat.completions.parse`` with a pydantic model, ``tools`` with
``tool_choice`` required or named (streamed and not), the parsing of ``auto`` tool calls, and a 400 naming the
field for every bad constraint. The tiny model's text is noise: whatever holds here, the grammar made hold."""

import json
import re

import jsonschema
import openai
import pydantic
import pytest

from minivllm.entrypoints.chat import chat_prompt
from minivllm.entrypoints.tools import Tool, ToolCallParser
from tests.entrypoints import MODEL, NO_EOS, TEMPLATE, serving

# the tiny checkpoint's config makes token 2 ('"') an EOS: without ignore_eos every quote would end the output
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "temp": {"type": "integer", "minimum": -20, "maximum": 40},
        "sky": {"enum": ["clear", "rain"]},
    },
    "required": ["city", "temp", "sky"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 6}},
            "required": ["zone"],
        },
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(llama_path):
    from minivllm.entrypoints import AsyncLLM

    # room for the tiny model's JSON, whitespace and all (JSON's whitespace is free, and it is noise)
    engine = AsyncLLM(llama_path, served_model_name=MODEL, kvcache_block_size=16, max_model_len=2048)
    with serving(engine, chat_template=TEMPLATE) as base_url:
        yield openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=120)
    engine.close()


def test_response_format_json_schema_and_json_object(client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=300,
        n=3,
        seed=1,
        extra_body=NO_EOS,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}},
    )
    for choice in out.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    out = client.completions.create(
        model=MODEL,
        prompt="JSON:",
        max_tokens=300,
        seed=2,
        extra_body={**NO_EOS, "response_format": {"type": "json_object"}},
    )
    assert out.choices[0].finish_reason != "stop" or isinstance(json.loads(out.choices[0].text), dict)


@pytest.mark.parametrize(
    "constraint, check",
    [
        ({"regex": r"[0-9]{2}:[0-9]{2}"}, lambda t: re.fullmatch(r"[0-9]{2}:[0-9]{2}", t)),
        ({"choice": ["left", "right"]}, lambda t: t in ("left", "right")),
        ({"grammar": 'root ::= "go " ("north" | "south")'}, lambda t: t in ("go north", "go south")),
        ({"json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ],
)
def test_structured_outputs_field(client, constraint, check):
    out = client.completions.create(
        model=MODEL,
        prompt="Answer:",
        max_tokens=300,
        n=4,
        temperature=1.0,
        extra_body={**NO_EOS, "structured_outputs": constraint},
    )
    assert all(c.finish_reason == "stop" and check(c.text) for c in out.choices), [c.text for c in out.choices]


def test_parse_with_a_pydantic_model(client):
    class Weather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=8)
        sky: str = pydantic.Field(pattern="^(clear|rain)$")
        temp: int = pydantic.Field(ge=-20, le=40)

    out = client.chat.completions.parse(
        model=MODEL, messages=USER, max_tokens=300, response_format=Weather, extra_body=NO_EOS
    )
    weather = out.choices[0].message.parsed
    assert isinstance(weather, Weather) and -20 <= weather.temp <= 40


def _check_calls(calls, tools) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_time"}}], ids=["required", "named"]
)
def test_tool_choice_is_enforced(client, stream, choice):
    tools = [WEATHER, TIME]
    kwargs = dict(
        model=MODEL, messages=USER, max_tokens=1200, tools=tools, tool_choice=choice, seed=3, extra_body=NO_EOS
    )
    if not stream:
        out = client.chat.completions.create(**kwargs)
        message, finish = out.choices[0].message, out.choices[0].finish_reason
        calls = message.tool_calls
    else:
        with client.chat.completions.stream(**kwargs) as events:
            final = events.get_final_completion()
        message, finish = final.choices[0].message, final.choices[0].finish_reason
        calls = message.tool_calls
    assert finish == "tool_calls"
    _check_calls(calls, tools)
    if isinstance(choice, dict):
        assert [c.function.name for c in calls] == ["get_time"]


def test_auto_tool_calls_are_parsed_from_the_hermes_format():
    tools = [Tool.model_validate(WEATHER)]
    parser = ToolCallParser(tools, "auto")
    content, calls = parser.message(
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
    )
    assert content == "Let me check." and len(calls) == 1
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}
    assert parser.message("It is sunny.") == ("It is sunny.", [])
    assert parser.message("<tool_call>{not json</tool_call>") == ("<tool_call>{not json</tool_call>", [])


def test_tools_reach_a_template_that_ignores_them_through_the_system_message(llama_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_path)
    text = tokenizer.decode(chat_prompt(tokenizer, USER, TEMPLATE, tools=[WEATHER]))
    assert text.startswith("<system>You may call one or more functions") and '"get_weather"' in text
    assert text.endswith("<user>Weather in Paris?\n<assistant>")


@pytest.mark.parametrize(
    "body, param",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}},
                    },
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "start: nothing_here"}}, "structured_outputs"),
        ({"structured_outputs": {"choice": ["a"]}, "response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, extra_body=body)
    assert e.value.body["param"] == param, e.value.body


def test_a_tool_conversation_goes_back_to_the_model(client):
    """The assistant's earlier calls are written back in the format it was asked for; the result follows."""
    from minivllm.entrypoints.protocol import ChatMessage

    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
    }
    turn = ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]})
    assert turn.as_template_input() == {
        "role": "assistant",
        "content": '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>',
    }
    out = client.chat.completions.create(
        model=MODEL,
        max_tokens=3,
        tools=[WEATHER],
        extra_body=NO_EOS,
        messages=[
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, clear"},
        ],
    )
    assert out.usage.completion_tokens == 3
