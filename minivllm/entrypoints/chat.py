"""Chat prompts: a conversation rendered with the checkpoint's chat template (or one given)."""

from __future__ import annotations


def chat_prompt(
    tokenizer, messages: list[dict], chat_template: str | None = None, tools: list | None = None
) -> list[int]:
    """Token ids of ``messages`` ([{"role": ..., "content": ...}]) with the assistant's turn opened; ``tools``
    (OpenAI tool dicts, or a :class:`~minivllm.entrypoints.tools.Tool` list) offered to the model as the
    template allows (entrypoints/tools.py). Raises ValueError when there is no template or the messages do
    not fit it."""
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer, and this checkpoint has none")
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ValueError("the tokenizer has no chat template; pass one (chat_template=..., or --chat-template)")
    if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    if tools:
        from minivllm.entrypoints.tools import Tool, with_tools

        messages, tools = with_tools(messages, [Tool.model_validate(t) for t in tools], template)
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True, tools=tools
        )
    except Exception as e:  # jinja errors: a template that raises on these messages
        raise ValueError(f"the chat template failed on these messages: {e}") from None
    # the template writes the special tokens (BOS) itself
    return tokenizer.encode(text, add_special_tokens=False)
