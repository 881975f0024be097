"""OpenAI-compatible routes: any OpenAI chat-completions client calls registered programs.

``POST /v1/chat/completions`` runs the program its ``model`` names (``summarize``, or a stored
version by name: ``summarize@1.1.0``); ``GET /v1/models`` lists the programs and their stored
versions. See :func:`add_openai_routes` for how messages map to inputs and outputs to answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_server.core.errors import (
    CircuitOpenError,
    LLMServerError,
    PayloadTooLargeError,
    RateLimitedError,
)
from llm_server.core.metadata import new_execution_id
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.streaming import Finished, TextDelta, stream_events
from llm_server.core.telemetry._logging import current_execution_id, log_context
from llm_server.core.telemetry._redaction import redact
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi._canary_serving import Picked
from llm_server.fastapi._endpoints import Outcome, billed
from llm_server.fastapi._errors import _retry_after, log_unexpected
from llm_server.fastapi._gate import body_limit, json_depth_limit, read_body, too_deep, too_large
from llm_server.fastapi._served import ServedProgram, served_programs
from llm_server.fastapi._sse import FIRST_EVENT_WAIT_S, PING_S, _EventStream
from llm_server.fastapi._state import get_program_manager

__all__ = ["add_openai_routes"]

logger = logging.getLogger("llm_server.fastapi")

VERSION_HEADER = "X-Program-Version"
EXECUTION_HEADER = "X-Execution-ID"


# --- the request --------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _ChatRequest(BaseModel):
    # Sampling options (temperature, ...) are accepted and ignored: the program decides.
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: str
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int | None = None


# --- errors in OpenAI's format -------------------------------------------------------------


class _OpenAIError(Exception):
    """A refusal answered with OpenAI's error object (raised inside this module only)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = dict(headers or {})


def _kind(status: int) -> str:
    """OpenAI's ``error.type`` for a status (its SDKs pick the exception class by status)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _error_body(status: int, message: str, *, code: str, param: str | None) -> dict[str, Any]:
    return {
        "error": {"message": redact(message), "type": _kind(status), "param": param, "code": code}
    }


def _error_response(exc: _OpenAIError) -> JSONResponse:
    body = _error_body(exc.status, exc.message, code=exc.code, param=exc.param)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers or None)


def _from_library(exc: LLMServerError) -> _OpenAIError:
    """Our error with its own status and ``error_type`` (as ``code``); Retry-After kept."""
    headers = None
    if isinstance(exc, CircuitOpenError | RateLimitedError):
        headers = _retry_after(exc.retry_after_s)
    elif exc.http_status >= 500:
        logger.warning("request failed: %s: %s", exc.error_type, redact(exc.message))
    return _OpenAIError(exc.http_status, exc.message, code=exc.error_type, headers=headers)


def _translated(exc: Exception) -> _OpenAIError:
    if isinstance(exc, _OpenAIError):
        return exc
    if isinstance(exc, LLMServerError):
        return _from_library(exc)
    if isinstance(exc, RequestValidationError):
        return _OpenAIError(400, f"invalid request: {exc.errors()!r}", code="invalid_request")
    if isinstance(exc, StarletteHTTPException):
        return _OpenAIError(
            exc.status_code,
            str(exc.detail),
            code="http_error",
            headers=dict(exc.headers) if exc.headers else None,
        )
    log_unexpected(exc)
    return _OpenAIError(500, "internal server error", code="internal_error")


class _OpenAIRoute(APIRoute):
    """Answers every failure of the route, its dependencies' too, with OpenAI's error object."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answering(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _error_response(_translated(exc))

        return answering


# --- messages to inputs, outputs to answers --------------------------------------------------


def _last_user_text(messages: Sequence[_Message]) -> str:
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [part.get("text") for part in content if part.get("type") == "text"]
            if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
                return "".join(str(t) for t in texts)
        raise _OpenAIError(
            400,
            "the last user message must be text (a string, or text parts only)",
            code="invalid_message",
            param="messages",
        )
    raise _OpenAIError(400, "no user message: the last one is the program's input",
                       code="invalid_message", param="messages")  # fmt: skip


def _request_body(
    program: ServedProgram, text: str, model_id: str, max_json_depth: int
) -> BaseModel:
    """The program route's request body from a message: its text for a program with one
    string input; a JSON object of the input fields otherwise (nested at most
    ``max_json_depth`` levels, checked before it is parsed)."""
    try:
        if program.text_input is not None:
            return program.request_model.model_validate(
                {program.text_input: text, "model_id": model_id}
            )
        deep = too_deep(text.encode("utf-8", "surrogatepass"), max_json_depth)
        if deep is not None:
            raise _OpenAIError(
                400, f"the last user message: {deep.message}", code="invalid_message",
                param="messages",
            )  # fmt: skip
        try:
            fields = json.loads(text)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise _OpenAIError(
                400,
                f"program {program.program_id!r} takes several inputs "
                f"({', '.join(program.input_names)}): the last user message must be a JSON "
                "object of them",
                code="invalid_message",
                param="messages",
            )
        fields.setdefault("model_id", model_id)
        return program.request_model.model_validate_json(json.dumps(fields), strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise _OpenAIError(
            400,
            f"the last user message does not fit program {program.program_id!r}: {problems}",
            code="invalid_message",
            param="messages",
        ) from None


def _answer(program: ServedProgram, data: Mapping[str, Any]) -> str:
    """The output field's text, or the outputs as a JSON object."""
    dumped = program.data_model.model_validate(data).model_dump(mode="json")
    if program.text_output is not None:
        return str(dumped[program.text_output])
    return json.dumps(dumped, ensure_ascii=False)


def _usage(env: Mapping[str, Any]) -> dict[str, int] | None:
    tokens = env["metadata"].get("performance", {}).get("tokens")
    if not isinstance(tokens, Mapping) or not isinstance(tokens.get("input"), int):
        return None  # the provider reported no usage: not the same as zero tokens
    prompt, completion = int(tokens["input"]), int(tokens.get("output") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failure after the stream started: sent as an error chunk."""

    error: Exception


def _chunk(data: Mapping[str, Any]) -> bytes:
    return b"data: %s\n\n" % json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


async def _resumed(
    first: TextDelta | Finished[Any], events: AsyncGenerator[TextDelta | Finished[Any], None]
) -> AsyncGenerator[TextDelta | Finished[Any], None]:
    """The stream again from its first event (read before the status line was chosen); a
    later failure becomes ``Finished(_Failed(...))``, for an error chunk."""
    try:
        yield first
        if isinstance(first, Finished):
            return
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except Exception as exc:
                yield Finished(_Failed(exc))
                return
            yield event
            if isinstance(event, Finished):
                return
    finally:
        await events.aclose()


async def _read_chat(request: Request, max_request_bytes: int | None) -> _ChatRequest:
    """The request body, bounded and validated (errors in OpenAI's format)."""
    limit = body_limit(request.app, max_request_bytes)
    try:
        oversized = too_large(request.headers, limit)
        if oversized is not None:
            raise oversized
        raw = await read_body(request.receive, limit)
    except PayloadTooLargeError as exc:
        raise _from_library(exc) from None
    try:
        return _ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _OpenAIError(
            400,
            f"invalid request: {where or 'body'}: {first['msg']}",
            code="invalid_request",
            param=where or None,
        ) from None


# --- the routes ---------------------------------------------------------------------------


def add_openai_routes(
    app: FastAPI,
    *,
    programs: Mapping[str, Any],
    default_model_id: str,
    dependencies: Sequence[Any] | None = None,
    prefix: str = "/v1",
    max_request_bytes: int | None = None,
) -> None:
    """Add OpenAI-compatible ``POST {prefix}/chat/completions`` and ``GET {prefix}/models``.

    Any OpenAI chat-completions client (the official SDKs, LangChain, chat UIs) then calls a
    registered program with ``model`` set to its id, or to ``id@version`` for a stored
    version by name (otherwise the version the registry serves). Requests run on the program
    route's machinery: the same pipeline on the composed model stack (deadline, fallbacks,
    retries, circuit breaker, rate limits), the tenant's budgets (set the tenant with a
    dependency such as :func:`~llm_server.fastapi.tenant_header`) and exact token counting.

    Mapping:

    - **Input**: the last ``user`` message (a string, or text parts joined). A program with
      one string input field gets the text as that field; any other program takes a JSON
      object of its input fields (``{"count": 3, "labels": ["a"]}``), validated as strictly as
      the program route validates its body (the optional ``model_id`` field chooses the model).
      Anything else is refused with 400 (``code: invalid_message``). Earlier messages, system
      prompts and sampling options are ignored: the program decides its prompt.
    - **Answer**: ``choices[0].message.content`` is the output field's text for a program with
      one string output field, else the outputs as a JSON object.
    - **Usage**: the request's exact tokens, summed over every model call the program made.
    - **Streaming** (``stream: true``): ``chat.completion.chunk`` objects, the pieces of the
      string output field as the model produces them (a program with several outputs sends its
      JSON object in one piece at the end), a last chunk with ``finish_reason: "stop"``, then
      one with ``usage`` when ``stream_options.include_usage`` is set, then ``data: [DONE]``.
      A failure before the first piece answers an error status; after it, an error chunk.
    - **Headers**: ``X-Program-Version`` names the version that answered; ``X-Execution-ID``
      the request's execution id (set by
      :class:`~llm_server.fastapi.RequestContextMiddleware` when installed, else here).
    - **Errors**: OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``
      with the status the library uses (``core.errors``' ``http_status``), ``code`` the
      library's ``error_type``: an unknown program or version 404, a bad message 400, an open
      circuit breaker 503 and a rate limit or budget 429, both with ``Retry-After``.

    Args:
        app: The app (its lifespan registers the programs: ``llm_server_lifespan``).
        programs: Program id -> its signature, or its module class (a module with exactly one
            predictor; pass the signature for others), as ``add_program_endpoint`` takes it.
        default_model_id: The model the programs run on (a JSON input may name another with
            ``model_id``).
        dependencies: FastAPI dependencies of both routes (authentication, the tenant).
        prefix: The path prefix (OpenAI clients take it in their ``base_url``).
        max_request_bytes: The largest body accepted (default: the settings'
            ``max_request_bytes``); a larger one is refused with 413.

    Raises:
        ConfigurationError: No programs, or a signature cannot be expressed as JSON.
    """
    served = served_programs(programs, default_model_id=default_model_id)

    async def chat_completions(request: Request) -> Response:
        chat = await _read_chat(request, max_request_bytes)
        if chat.n not in (None, 1):
            raise _OpenAIError(400, "only n=1 is supported", code="invalid_request", param="n")
        program_id, _, version = chat.model.partition("@")
        program = served.get(program_id)
        if program is None:
            raise _OpenAIError(
                404,
                f"the model {chat.model!r} does not exist: it names a program "
                f"({', '.join(sorted(served))}), optionally with @version",
                code="model_not_found",
                param="model",
            )
        depth = json_depth_limit(request.app)
        body = _request_body(program, _last_user_text(chat.messages), default_model_id, depth)
        manager = get_program_manager(request)
        model_id: str = getattr(body, "model_id")  # noqa: B009 -- a field of the built model
        picked = program.pick(manager, request, version or None)  # a canary's share too
        route = program.route(manager, model_id, version or None, picked=picked)
        route.ensure_available()  # an open breaker answers 503 before any work
        answered_by = f"{program_id}@{route.program_metadata.version}"
        headers = {VERSION_HEADER: str(route.program_metadata.version)}
        execution_id = current_execution_id()
        if execution_id is None:  # no RequestContextMiddleware: the id is made (and sent) here
            execution_id = new_execution_id()
            headers[EXECUTION_HEADER] = execution_id
        call = _Call(chat, program, manager, route, body, answered_by, execution_id, picked)
        with log_context(execution_id=execution_id):
            if chat.stream:
                response = await _stream(call)
                response.headers.update(headers)
                return response
            env = await program.run(manager, route, body, picked=picked)
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{execution_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answered_by,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _answer(program, env["data"])},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
        usage = _usage(env)
        if usage is not None:
            completion["usage"] = usage
        return JSONResponse(completion, headers=headers)

    async def models(request: Request) -> Response:
        manager = get_program_manager(request)
        listed: list[dict[str, Any]] = []
        for program_id in served:
            meta = manager.registry.get_program_metadata(program_id)
            created = _timestamp(meta.created_at)
            listed.append(_model(program_id, created))
            for version in await manager.alist_versions(program_id):  # disk I/O: off the loop
                listed.append(_model(f"{program_id}@{version}", created))
        return JSONResponse({"object": "list", "data": listed})

    deps = list(dependencies or [])
    app.router.add_api_route(
        f"{prefix}/chat/completions",
        chat_completions,
        methods=["POST"],
        dependencies=deps,
        summary="OpenAI-compatible chat completions: `model` names a program",
        name="openai_chat_completions",
        route_class_override=_OpenAIRoute,
        tags=["openai"],
    )
    app.router.add_api_route(
        f"{prefix}/models",
        models,
        methods=["GET"],
        dependencies=deps,
        summary="OpenAI-compatible model list: the programs and their stored versions",
        name="openai_models",
        route_class_override=_OpenAIRoute,
        tags=["openai"],
    )


def _timestamp(created_at: Any) -> int:
    if isinstance(created_at, str):
        try:
            return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return 0
    return 0


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llm-server"}


@dataclass(frozen=True, slots=True)
class _Call:
    """One chat completion on its way: what the stream needs to answer it."""

    chat: _ChatRequest
    program: ServedProgram
    manager: Any
    route: Any
    body: BaseModel
    answered_by: str
    execution_id: str
    picked: Picked | None
    """The version picked when the call named none (counted in its live figures)."""


async def _stream(call: _Call) -> Response:
    """The streamed answer; a failure before its first event answers an error status."""
    program, route, body = call.program, call.route, call.body
    model_id: str = getattr(body, "model_id")  # noqa: B009 -- a field of the built model
    data = PipelineData(
        media_type=MediaType.STRUCTURED,
        content={name: getattr(body, name) for name in program.input_names},
    )
    metrics = PerformanceMetrics()
    # counted and captured as on the program route; a failure (before the first event or
    # after) leaves with what it was billed
    outcome = Outcome(call.manager, program.program_id, route, call.picked, model_id, data, metrics)
    with log_context(program_id=program.program_id, model_id=model_id):
        events = stream_events(lambda: billed(route.pipeline.execute(data), metrics))
        # The first event decides the status: an error before it is answered with its status.
        try:
            first = await anext(events)
        except Exception as exc:
            outcome.failed(exc)
            raise
    options = call.chat.stream_options
    include_usage = options is not None and options.include_usage
    chunk_id = f"chatcmpl-{call.execution_id}"
    frame = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
             "model": call.answered_by}  # fmt: skip
    state = {"role_sent": False, "streamed": False}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not state["role_sent"]:
            state["role_sent"] = True
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _chunk({**frame, "choices": [choice]})

    def encode(event: TextDelta | Finished[Any], _streamed: set[str]) -> list[bytes]:
        if isinstance(event, TextDelta):
            if event.field != program.text_output:
                return []  # e.g. a ChainOfThought's reasoning: not part of the answer
            if not state["streamed"]:
                state["streamed"] = True
                metrics.mark_checkpoint("first_token")
            return [chunk({"content": event.text})]
        if isinstance(event.result, _Failed):
            outcome.failed(event.result.error)
            exc = _translated(event.result.error)
            return [_chunk(_error_body(exc.status, exc.message, code=exc.code, param=exc.param))]
        env = outcome.served(event.result)
        out: list[bytes] = []
        if not state["streamed"]:  # several outputs, or nothing streamed (a cache hit)
            out.append(chunk({"content": _answer(program, env["data"])}))
        out.append(chunk({}, "stop"))
        if include_usage:
            out.append(_chunk({**frame, "choices": [], "usage": _usage(env)}))
        out.append(b"data: [DONE]\n\n")
        return out

    return _EventStream(
        _resumed(first, events), encode=encode, first_event_wait_s=FIRST_EVENT_WAIT_S, ping_s=PING_S
    )
