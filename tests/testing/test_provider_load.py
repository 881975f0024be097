"""LocalProvider under load: 256 concurrent keep-alive connections (slow; run with -m slow)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from llm_server.testing import LocalProvider

CONNECTIONS = 256
REQUESTS_PER_CONNECTION = 8


async def _client(port: int, client_id: int) -> list[str]:
    """Send requests over one raw keep-alive connection (httpx would be the bottleneck here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for n in range(REQUESTS_PER_CONNECTION):
            body = json.dumps(
                {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"c{client_id} r{n}"}],
                }
            ).encode()
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answers.append(
                json.loads(await reader.readexactly(length))["choices"][0]["message"]["content"]
            )
    finally:
        writer.close()
    return answers


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.anyio
async def test_256_concurrent_connections_each_get_their_own_answers() -> None:
    with LocalProvider(max_recorded=None) as provider:
        started = time.perf_counter()
        results = await asyncio.gather(*(_client(provider.port, c) for c in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
        assert len(provider.requests) == CONNECTIONS * REQUESTS_PER_CONNECTION
    for client_id, answers in enumerate(results):
        assert answers == [f"echo: c{client_id} r{n}" for n in range(REQUESTS_PER_CONNECTION)]
    rate = CONNECTIONS * REQUESTS_PER_CONNECTION / elapsed
    assert rate > 300, f"only {rate:.0f} requests/s"
