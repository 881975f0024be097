"""``sse_response``: the status line waits for the first event; keep-alives; late errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from llm_server.core.errors import CircuitOpenError, ProviderUnavailableError
from llm_server.core.streaming import Finished, TextDelta
from llm_server.fastapi import install_error_handlers, sse_response

pytestmark = pytest.mark.anyio

Script = list[tuple[float, TextDelta | Finished[Any] | Exception]]


def app_streaming(script: Script, closed: list[str], **timing: float) -> FastAPI:
    """An app whose ``POST /s`` streams ``script``: (seconds to wait, event or error) each."""
    app = FastAPI()
    install_error_handlers(app)

    async def events() -> AsyncGenerator[TextDelta | Finished[Any], None]:
        try:
            for delay, item in script:
                await asyncio.sleep(delay)
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            closed.append("closed")

    @app.post("/s")
    async def stream() -> Response:
        return await sse_response(events(), done=lambda result: {"data": result}, **timing)

    return app


async def post(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await asyncio.wait_for(client.post("/s"), timeout=10)


def blocks(text: str) -> list[str]:
    """Each SSE block: ``ping`` for a keep-alive comment, else ``event`` or ``event data``."""
    found = []
    for block in text.split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            found.append("ping")
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(fields["data"])
        found.append(f"{fields['event']} {data.get('text', '')}".strip())
    return found


async def test_a_slow_first_event_starts_the_stream_with_keep_alives() -> None:
    closed: list[str] = []
    script: Script = [(0.45, TextDelta("output", "Hi")), (0.0, Finished({"output": "Hi"}))]
    app = app_streaming(script, closed, first_event_wait_s=0.05, ping_s=0.1)
    response = await post(app)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    found = blocks(response.text)
    assert found[-2:] == ["delta Hi", "done"]
    assert found[:-2] == ["ping"] * len(found[:-2])
    assert 2 <= len(found[:-2]) <= 5  # 0.45 s of silence, a ping after each 0.1 s of it
    assert closed == ["closed"]


async def test_silence_between_events_is_kept_alive_and_events_are_not_delayed() -> None:
    closed: list[str] = []
    script: Script = [
        (0.0, TextDelta("output", "a")),
        (0.35, TextDelta("output", "b")),
        (0.0, Finished({"output": "ab"})),
    ]
    app = app_streaming(script, closed, first_event_wait_s=1.0, ping_s=0.1)
    response = await post(app)
    found = blocks(response.text)
    assert found[0] == "delta a"
    assert found[-2:] == ["delta b", "done"]
    assert 2 <= found.count("ping") <= 4
    assert closed == ["closed"]


async def test_no_keep_alive_while_events_flow() -> None:
    script: Script = [(0.0, TextDelta("output", str(n))) for n in range(20)]
    script.append((0.0, Finished({"output": "x"})))
    response = await post(app_streaming(script, [], first_event_wait_s=1.0, ping_s=0.05))
    assert "ping" not in blocks(response.text)
    assert len(blocks(response.text)) == 21


async def test_a_failure_before_the_first_event_answers_with_its_status() -> None:
    closed: list[str] = []
    script: Script = [(0.05, CircuitOpenError("m", 3.0))]
    response = await post(app_streaming(script, closed, first_event_wait_s=1.0))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "circuit_open"
    assert response.headers["retry-after"] == "3"
    assert closed == ["closed"]


async def test_a_failure_after_the_stream_started_ends_it_with_an_error_event() -> None:
    for script in (
        [(0.0, TextDelta("output", "a")), (0.05, ProviderUnavailableError("503 upstream"))],
        [(0.3, ProviderUnavailableError("503 upstream"))],  # started by the wait, no event
    ):
        closed: list[str] = []
        response = await post(app_streaming(script, closed, first_event_wait_s=0.1, ping_s=5))
        assert response.status_code == 200
        text = response.text
        assert blocks(text)[-1] == "error"
        error = json.loads(text.rsplit("data: ", 1)[1])
        assert error["error"]["type"] == "provider_unavailable"
        assert closed == ["closed"]


async def test_a_stream_that_ends_without_an_event_is_an_empty_200() -> None:
    response = await post(app_streaming([], [], first_event_wait_s=1.0))
    assert response.status_code == 200
    assert response.text == ""


async def test_a_string_field_that_streamed_nothing_is_sent_whole_before_done() -> None:
    script: Script = [
        (0.0, TextDelta("reasoning", "because")),
        (0.0, Finished({"reasoning": "because", "answer": "42", "score": 3})),
    ]
    found = blocks((await post(app_streaming(script, []))).text)
    assert found == ["delta because", "delta 42", "done"]


async def test_waiting_for_a_slow_first_event_does_not_spin() -> None:
    """The helper sleeps between its looks (one wake-up per ``ping_s`` at most)."""
    loop = asyncio.get_running_loop()
    script: Script = [(0.5, TextDelta("output", "a")), (0.0, Finished({"output": "a"}))]
    app = app_streaming(script, [], first_event_wait_s=0.4, ping_s=0.05)
    started = loop.time()
    cpu = time.process_time()
    await post(app)
    assert loop.time() - started >= 0.5
    assert time.process_time() - cpu < 0.25  # a busy loop would burn ~0.5 s
