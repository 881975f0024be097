"""Route one HTTP request of the local provider: record, delay, fault or answer."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Literal

from llm_server.core.errors import InputError
from llm_server.core.tokens import count_message_tokens, count_text_tokens
from llm_server.testing._provider_faults import FaultRule, error_response
from llm_server.testing._provider_http import HttpConnection, HttpRequest
from llm_server.testing._provider_records import RecordedRequest
from llm_server.testing._provider_replies import RenderedReply, read_prompt, render_full_reply
from llm_server.testing._provider_wire import (
    ChatRequest,
    Usage,
    completion_body,
    parse_chat_request,
    stream_events,
)

if TYPE_CHECKING:
    from llm_server.testing._provider import LocalProvider

__all__ = ["Responder"]

# A 200 whose body stops mid-JSON, as a proxy cutting a response short would send it.
_MALFORMED_BODY: Final = b'{"id": "chatcmpl-local-broken", "object": "chat.completion", "choi'


class Responder:
    """Answers requests for one :class:`LocalProvider`."""

    __slots__ = ("_provider",)

    def __init__(self, provider: LocalProvider) -> None:
        self._provider = provider

    async def handle(self, connection: HttpConnection, request: HttpRequest) -> bool:
        """Answer ``request``; returns whether the connection may serve another one."""
        provider = self._provider
        record = provider._record(request)  # the responder is part of the provider
        latency_s, rule = provider._decide(record.model, record.path)
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        fault = rule.fault if rule is not None else None
        if fault == "hang":
            await connection.wait_for_client_close()
            return False
        if fault == "connection_reset":
            connection.reset()
            return False
        if fault == "malformed_json":
            await connection.respond(200, _MALFORMED_BODY, keep_alive=request.keep_alive)
            return request.keep_alive

        api = record.api
        if request.method == "GET":
            status, body = self._get(record)
        elif request.method != "POST" or api is None:
            status, body = 404, _error(f"no route for {request.method} {request.path}")
        else:
            return await self._chat(connection, request, record, api, rule)
        await connection.respond(status, body, keep_alive=request.keep_alive)
        return request.keep_alive

    def _get(self, record: RecordedRequest) -> tuple[int, bytes]:
        if record.path.endswith("/models"):
            names = list(self._provider.scripted_models) or ["local-model"]
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "local"} for n in names]
            return 200, json.dumps({"object": "list", "data": data}).encode()
        if record.path in {"/", "/health"}:
            return 200, b'{"status": "ok"}'
        return 404, _error(f"no route for GET {record.path}")

    async def _chat(
        self,
        connection: HttpConnection,
        request: HttpRequest,
        record: RecordedRequest,
        api: Literal["openai", "anthropic"],
        rule: FaultRule | None,
    ) -> bool:
        keep_alive = request.keep_alive
        try:
            chat = parse_chat_request(api, record.body)
        except InputError as exc:
            await connection.respond(400, _error(exc.message), keep_alive=keep_alive)
            return keep_alive
        if rule is not None and rule.fault is not None:
            prompt_tokens = count_message_tokens(chat.messages, chat.model)
            status, headers, body = error_response(rule, api=api, prompt_tokens=prompt_tokens)
            await connection.respond(status, body, headers=headers, keep_alive=keep_alive)
            return keep_alive
        try:
            reply = await self._reply(record, chat)
        except Exception as exc:  # a failing user callable becomes a visible 500
            await connection.respond(500, _error(f"reply callable failed: {exc!r}"))
            return keep_alive
        usage = self._usage(chat, reply.billed_text) if self._provider.usage else None
        if usage is not None:
            self._provider.billed.append((usage.prompt_tokens, usage.completion_tokens))
        if not chat.stream:
            body = completion_body(chat, reply, usage, record.index)
            await connection.respond(200, body, keep_alive=keep_alive)
            return keep_alive
        return await self._stream(
            connection, stream_events(chat, reply, usage, record.index), keep_alive
        )

    async def _stream(
        self, connection: HttpConnection, events: Iterator[bytes], keep_alive: bool
    ) -> bool:
        """Send a streamed answer, paced and cut as the provider is told to."""
        provider = self._provider
        await connection.start_stream()
        try:
            for sent, event in enumerate(events):
                if sent and provider.chunk_delay_s:
                    # Before the cut too: a reset discards what the client has not read yet,
                    # so the pause is what lets the events before a cut arrive.
                    await asyncio.sleep(provider.chunk_delay_s)
                if provider.cut_streams_after is not None and sent >= provider.cut_streams_after:
                    connection.reset()
                    return False
                await connection.send_chunk(event)
            await connection.end_stream()
        except (ConnectionError, OSError):  # the client went away in the middle
            provider.stream_disconnects.append(time.monotonic())
            return False
        return keep_alive

    async def _reply(self, record: RecordedRequest, chat: ChatRequest) -> RenderedReply:
        reply: Any = self._provider.reply_for(chat.model or None)
        if callable(reply):
            reply = reply(record)
            if inspect.isawaitable(reply):
                reply = await reply
        return render_full_reply(read_prompt(chat.system_text, chat.last_user_text), reply)

    @staticmethod
    def _usage(chat: ChatRequest, text: str) -> Usage:
        return Usage(
            prompt_tokens=count_message_tokens(chat.messages, chat.model),
            completion_tokens=count_text_tokens(text, chat.model),
        )


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
