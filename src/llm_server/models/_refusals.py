"""Keep an OpenAI refusal that arrives in a streamed answer (private).

An OpenAI model that declines streams its refusal as ``delta.refusal`` chunks (no content,
``finish_reason: "stop"``). Neither engine keeps them: lm15's Chat Completions stream parser
reads only ``content``, reasoning and tool calls, and LiteLLM's stream wrapper drops a chunk
whose delta holds only a refusal (DSPy's LiteLLM engine would refuse the key anyway). The
assembled answer is then empty, and the refusal (the model's message to the user) is lost.

Each engine's per-chunk step is wrapped here to read the refusal from the provider's raw
chunk, before the engine drops it, into the current request's scope
(:attr:`RequestScope.stream_refusals`, by call); :func:`~._answers.answer_error` reads it
from there. The chunks themselves go on unchanged. An engine without these internals is left
as it is (a streamed refusal is then reported as an empty answer, as before).
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from llm_server.models._request_scope import current_scope

__all__ = ["capture_litellm_refusals", "capture_lm15_refusals"]

_MARK = "_llm_server_refusals"


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _keep(chunk: Any) -> None:
    """Add the refusal text of one raw chunk (OpenAI shape) to the current call's."""
    choices = _get(chunk, "choices")
    if not choices:
        return
    refusal = _get(_get(choices[0], "delta"), "refusal")
    if not isinstance(refusal, str) or not refusal:
        return
    scope = current_scope.get()
    if scope is not None:
        call = len(scope.entries)  # the call in flight: its record is appended when it ends
        scope.stream_refusals[call] = scope.stream_refusals.get(call, "") + refusal


def capture_lm15_refusals() -> None:
    """Wrap lm15's Chat Completions stream parser (DSPy's native engine) once."""
    try:
        # imported by name: the vendored lm15 ships type information, and a static import
        # would make mypy read the untyped dspy package as a bare namespace
        chat = importlib.import_module("dspy._vendor.lm15.providers.openai_chat")
    except ImportError:  # a DSPy without it
        return
    OpenAIChatLM = chat.OpenAIChatLM  # noqa: N806 -- the class, under its own name
    parse = getattr(OpenAIChatLM, "parse_stream_events", None)
    if not callable(parse) or getattr(parse, _MARK, False):
        return

    def parse_stream_events(self: Any, request: Any, raw_event: Any) -> Iterator[Any]:
        data = getattr(raw_event, "data", None)
        if isinstance(data, str) and '"refusal"' in data:  # parsed only when it may hold one
            with contextlib.suppress(ValueError):  # lm15's own parser reports a bad event
                _keep(json.loads(data))
        return parse(self, request, raw_event)  # type: ignore[no-any-return]

    setattr(parse_stream_events, _MARK, True)
    setattr(OpenAIChatLM, "parse_stream_events", parse_stream_events)  # noqa: B010


def capture_litellm_refusals() -> None:
    """Wrap LiteLLM's per-chunk step of a stream once (LiteLLM must be importable)."""
    try:
        from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
    except ImportError:  # no LiteLLM, or one without it
        return
    create = getattr(CustomStreamWrapper, "chunk_creator", None)
    if not callable(create) or getattr(create, _MARK, False):
        return

    def chunk_creator(self: Any, chunk: Any) -> Any:
        _keep(chunk)
        return create(self, chunk=chunk)

    setattr(chunk_creator, _MARK, True)
    setattr(CustomStreamWrapper, "chunk_creator", chunk_creator)  # noqa: B010
