"""OpenAI chat-completions and Anthropic Messages wire formats, both directions."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from llm_server.core.errors import InputError
from llm_server.testing._provider_replies import RenderedReply

__all__ = ["ChatRequest", "Usage", "completion_body", "parse_chat_request", "stream_events"]

Api = Literal["openai", "anthropic"]
_WORDS: Final = re.compile(r"\S+\s*|\s+")
_WORDS_PER_CHUNK: Final = 4


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one exchange."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the provider needs, for either API.

    Attributes:
        api: Which wire format the request used.
        model: The model name sent.
        messages: Messages to count prompt tokens over (Anthropic's ``system`` prepended).
        system_text: All system text, joined.
        last_user_text: Text of the last user message (text parts joined).
        stream: Whether an SSE stream was asked for.
        include_usage: Whether a streamed usage chunk was asked for (Anthropic: always).
    """

    api: Api
    model: str
    messages: list[Mapping[str, Any]]
    system_text: str
    last_user_text: str
    stream: bool
    include_usage: bool


def parse_chat_request(api: Api, body: Any) -> ChatRequest:
    """Read a chat request body; raises :class:`InputError` when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise InputError("request body must be a JSON object with a 'messages' list")
    messages = [m for m in body["messages"] if isinstance(m, Mapping)]
    system_parts = [_text(m.get("content")) for m in messages if m.get("role") == "system"]
    if api == "anthropic" and body.get("system"):
        system_parts.insert(0, _text(body["system"]))
        messages = [{"role": "system", "content": system_parts[0]}, *messages]
    users = [m for m in messages if m.get("role") == "user"]
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    return ChatRequest(
        api=api,
        model=str(body.get("model", "")),
        messages=messages,
        system_text="\n".join(system_parts),
        last_user_text=_text(users[-1].get("content")) if users else "",
        stream=bool(body.get("stream")),
        include_usage=include_usage or api == "anthropic",
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
            for part in content
            if isinstance(part, str) or (isinstance(part, Mapping) and part.get("type") == "text")
        )
    return ""


_ANTHROPIC_STOP: Final = {"stop": "end_turn", "length": "max_tokens"}


def _anthropic_stop(reply: RenderedReply) -> str:
    if reply.refusal is not None:
        return "refusal"
    return _ANTHROPIC_STOP.get(reply.finish_reason, reply.finish_reason)


def completion_body(
    request: ChatRequest, reply: RenderedReply, usage: Usage | None, index: int
) -> bytes:
    """A non-streamed response body."""
    body: dict[str, Any]
    text = reply.text
    if request.api == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reply.refusal is not None:
            message["refusal"] = reply.refusal
        body = {
            "id": f"chatcmpl-local-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        }
        if usage is not None:
            body["usage"] = _openai_usage(usage)
    else:
        body = {
            "id": f"msg_local_{index}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": text}] if text is not None else [],
            "stop_reason": _anthropic_stop(reply),
            "stop_sequence": None,
        }
        if usage is not None:
            body["usage"] = {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
            }
    return json.dumps(body).encode()


def _openai_usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _pieces(text: str) -> Iterator[str]:
    words = _WORDS.findall(text)
    for start in range(0, len(words), _WORDS_PER_CHUNK):
        yield "".join(words[start : start + _WORDS_PER_CHUNK])


def stream_events(
    request: ChatRequest, reply: RenderedReply, usage: Usage | None, index: int
) -> Iterator[bytes]:
    """The Server-Sent Events of a streamed response, one ``bytes`` per event."""
    if request.api == "openai":
        yield from _openai_events(request, reply, usage, index)
    else:
        yield from _anthropic_events(request, reply, usage, index)


def _sse(data: Mapping[str, Any], event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data)}\n\n".encode()


def _openai_events(
    request: ChatRequest, reply: RenderedReply, usage: Usage | None, index: int
) -> Iterator[bytes]:
    frame = {
        "id": f"chatcmpl-local-{index}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
    }

    def chunk(delta: Mapping[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**frame, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(reply.text or ""):
        yield chunk({"content": piece})
    if reply.refusal is not None:
        yield chunk({"refusal": reply.refusal})
    yield chunk({}, reply.finish_reason)
    if usage is not None and request.include_usage:
        yield _sse({**frame, "choices": [], "usage": _openai_usage(usage)})
    yield b"data: [DONE]\n\n"


def _anthropic_events(
    request: ChatRequest, reply: RenderedReply, usage: Usage | None, index: int
) -> Iterator[bytes]:
    message: dict[str, Any] = {
        "id": f"msg_local_{index}",
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = {"input_tokens": usage.prompt_tokens, "output_tokens": 1}
    yield _sse({"type": "message_start", "message": message}, "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield _sse(block, "content_block_start")
    for piece in _pieces(reply.text or ""):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        yield _sse(delta, "content_block_delta")
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    end: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _anthropic_stop(reply), "stop_sequence": None},
    }
    if usage is not None:
        # Current Anthropic API versions repeat input_tokens here; some clients read only this.
        end["usage"] = {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
        }
    yield _sse(end, "message_delta")
    yield _sse({"type": "message_stop"}, "message_stop")
