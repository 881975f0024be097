"""Count prompt and completion tokens offline, the way OpenAI bills chat models.

:func:`count_message_tokens` follows OpenAI's published accounting for chat models (the
"How to count tokens with tiktoken" cookbook): every message costs 3 tokens of framing plus the
tokens of each of its string values (``role`` and ``content`` included), a ``name`` costs one
more, and 3 tokens prime the reply. For OpenAI chat models on plain-text messages this gives the
same numbers as ``litellm.token_counter(model=..., messages=...)``; one documented difference:
LiteLLM encodes text in 1,024-character slices (a speed trade-off), which can add a token at a
slice border, so on strings longer than that it may count slightly *more* than the API bills;
we always encode whole strings.

Content given as a list of parts counts its text parts; image, audio and file parts count zero
here, because their price depends on provider-side resizing that no offline count reproduces.
Tool-call arguments in assistant messages are counted as text, as LiteLLM does.

Models tiktoken does not know (Anthropic, Gemini, ...) are counted with ``cl100k_base``: an
approximation, not the provider's own tokenizer. Encodings are loaded once and cached, never
from the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from llm_server._offline import encoding_for_model

__all__ = ["count_message_tokens", "count_text_tokens"]

TOKENS_PER_MESSAGE: Final = 3
"""Framing tokens around every message (``<|start|>{role}\\n ... <|end|>\\n``)."""
TOKENS_PER_NAME: Final = 1
"""Extra cost of a ``name`` key."""
REPLY_PRIMING_TOKENS: Final = 3
"""Every reply is primed with ``<|start|>assistant<|message|>``."""

# Part types whose text is billed; everything else in a content list (images, audio, files)
# is counted as zero (see the module docstring).
_TEXT_PART_KEYS: Final[Mapping[str, str]] = {"text": "text", "input_text": "text"}


def count_text_tokens(text: str, model: str) -> int:
    """The number of tokens in ``text`` for ``model``.

    Special-token strings such as ``<|endoftext|>`` count as ordinary text, as they would
    arrive in a prompt.

    Args:
        text: The text to count.
        model: A model name, with or without a provider prefix (``openai/gpt-4o-mini``).

    Returns:
        The token count.
    """
    if not text:
        return 0
    return len(encoding_for_model(model).encode_ordinary(text))


def count_message_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """The prompt tokens OpenAI bills for a list of chat messages, reply priming included.

    Args:
        messages: Chat messages as dicts (``{"role": ..., "content": ...}``); ``content`` may be
            a string or a list of parts (text parts are counted, image parts are not).
        model: A model name, with or without a provider prefix.

    Returns:
        The prompt token count (an empty list still costs the reply priming).
    """
    encode = encoding_for_model(model).encode_ordinary
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                if value:
                    total += len(encode(value))
                if key == "name":
                    total += TOKENS_PER_NAME
            elif key == "content" and isinstance(value, list):
                total += sum(len(encode(text)) for text in _part_texts(value) if text)
            elif key == "tool_calls" and isinstance(value, list):
                total += sum(len(encode(text)) for text in _tool_call_arguments(value) if text)
            elif key == "function_call" and isinstance(value, Mapping):
                total += len(encode(str(value.get("arguments", ""))))
    return total + REPLY_PRIMING_TOKENS


def _part_texts(parts: list[Any]) -> Iterable[str]:
    for part in parts:
        if isinstance(part, str):
            yield part
        elif isinstance(part, Mapping):
            key = _TEXT_PART_KEYS.get(str(part.get("type")))
            if key is not None:
                yield str(part.get(key) or "")


def _tool_call_arguments(tool_calls: list[Any]) -> Iterable[str]:
    for call in tool_calls:
        if isinstance(call, Mapping):
            function = call.get("function")
            if isinstance(function, Mapping):
                yield str(function.get("arguments", ""))
