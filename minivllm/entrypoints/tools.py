"""OpenAI's ``response_format`` and ``tools`` / ``tool_choice``, as structured-output constraints and as the
parsing of the model's tool calls.

* ``response_format``: ``json_object`` -> any JSON object; ``json_schema`` -> that schema (``strict`` or
  not: the schema is always enforced). vLLM's ``structured_outputs`` field is taken as it is.
* ``tool_choice="required"`` -> a JSON array of ``{"name", "arguments"}`` calls, each matching one
  function's parameters; a named function -> its parameters' schema (the output is the arguments).
  Both are parsed into ``tool_calls``.
* ``tool_choice="auto"`` (the default with tools) -> unconstrained; the model answers with text or with
  Hermes/Qwen-style ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks, parsed into
  ``tool_calls``. ``none`` -> plain text.

The tools reach the model through the chat template (``tools=`` of ``apply_chat_template``) when the
template reads them; otherwise (SmolLM2's template ignores them) through a system message of our own
(:func:`tool_prompt`) that lists them and asks for the ``<tool_call>`` format.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minivllm.core.sampling_params import StructuredOutputsParams


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: dict[str, str]  # {"name": ...}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def response_format_constraint(fmt: ResponseFormat) -> StructuredOutputsParams | None:
    if fmt.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        return StructuredOutputsParams(json=fmt.json_schema.schema_)
    return None


def _call_schema(fn: FunctionDef) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": fn.name}, "arguments": fn.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def named_function(tools: list[Tool], choice: NamedToolChoice) -> FunctionDef:
    name = choice.function.get("name")
    fn = next((t.function for t in tools if t.function.name == name), None)
    if fn is None:
        raise ValueError(f"tool_choice names function {name!r}, which is not among the tools")
    return fn


def tool_constraint(tools: list[Tool], choice) -> StructuredOutputsParams | None:
    """The constraint ``tool_choice`` asks for: None for "none" and "auto"."""
    if choice == "required":
        calls = [_call_schema(t.function) for t in tools]
        calls = {"anyOf": calls} if len(calls) > 1 else calls[0]
        return StructuredOutputsParams(json={"type": "array", "items": calls, "minItems": 1})
    if isinstance(choice, NamedToolChoice):
        return StructuredOutputsParams(json=named_function(tools, choice).parameters)
    return None


def tool_prompt(tools: list[Tool]) -> str:
    """The system message that offers the tools to a model whose chat template does not (Hermes' wording)."""
    specs = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in tools)
    return (
        "You may call one or more functions to assist with the user query. The functions are listed "
        f"within <tools></tools>:\n<tools>\n{specs}\n</tools>\nFor each function call, return a JSON object "
        "with the function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def with_tools(messages: list[dict], tools: list[Tool], template: str) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools for the template): the tools go to a template that reads them, else into the system
    message (prepended to the first one, or a new one)."""
    if "tools" in template:
        return messages, [t.model_dump(exclude_none=True) for t in tools]
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": messages[0]["content"] + "\n\n" + tool_prompt(tools)}
        return [first, *messages[1:]], None
    return [{"role": "system", "content": tool_prompt(tools)}, *messages], None


def tool_calls_text(calls: list[dict]) -> str:
    """An assistant turn's earlier ``tool_calls`` as the ``<tool_call>`` blocks the model was asked to write."""
    blocks = []
    for call in calls:
        fn = call.get("function") or {}
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            arguments = fn.get("arguments")
        blocks.append(f"<tool_call>\n{json.dumps({'name': fn.get('name'), 'arguments': arguments})}\n</tool_call>")
    return "".join("\n" + b for b in blocks)


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _call(name: str, arguments) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": args}}


class ToolCallParser:
    """Turns one completion's text into an assistant message: ``content`` and ``tool_calls``."""

    def __init__(self, tools: list[Tool], choice):
        self.choice = choice
        self.named = named_function(tools, choice).name if isinstance(choice, NamedToolChoice) else None

    def message(self, text: str) -> tuple[str | None, list[dict]]:
        """(content, tool calls) of a finished completion's text."""
        if self.named is not None or self.choice == "required":
            try:  # the grammar's JSON; unparsable only when max_tokens cut it short: then it stays text
                calls = json.loads(text)
                if self.named is not None:
                    return None, [_call(self.named, text)]
                return None, [_call(c["name"], c["arguments"]) for c in calls]
            except (ValueError, TypeError, KeyError):
                return text, []
        calls = []
        for match in _TOOL_CALL.finditer(text):
            try:
                call = json.loads(match.group(1))
                calls.append(_call(call["name"], call.get("arguments", {})))
            except (ValueError, TypeError, KeyError):
                return text, []  # not a well-formed call: the text is the answer
        if not calls:
            return text, []
        content = text[: text.find("<tool_call>")].strip()
        return content or None, calls
