"""A native engine's transport reads the proxy variables once, when first used, as httpx does.

lm15 reads them (every environment variable) before every request; with none set, the
library's transports stop reading them after the first call. A proxy set before that first call
is still used, request by request; one set later is not seen (documented: restart the worker).
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy
import pytest
from dspy._vendor.lm15.transports import _proxy

from llm_server.core.config import FrameworkSettings
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


def backend_for(provider: LocalProvider) -> Any:
    config = StaticConfigProvider(
        {
            "m": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
            }
        }
    )
    manager = ModelManager(config_provider=config, settings=FrameworkSettings(otel_enabled=False))
    return manager.single_attempt_backend(dspy.Predict(Ask), "m")


class FakeProxy:
    """A loopback 'proxy' that records each request line and answers 502."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.lines.append(head.split(b"\r\n", 1)[0].decode())
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> FakeProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def fake_proxy() -> AsyncIterator[FakeProxy]:
    async with FakeProxy() as proxy:
        yield proxy


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every read of the proxy variables, lm15's and the library's."""
    reads = [0]
    real = urllib.request.getproxies

    def getproxies() -> dict[str, str]:
        reads[0] += 1
        return real()

    monkeypatch.setattr(_proxy, "getproxies", getproxies)
    monkeypatch.setattr(urllib.request, "getproxies", getproxies)
    return reads


async def test_without_a_proxy_the_variables_are_read_once_not_per_request(
    provider: LocalProvider, no_proxy_env: pytest.MonkeyPatch
) -> None:
    reads = counting(no_proxy_env)
    backend = backend_for(provider)
    await backend.predict({"question": "first?"})
    after_first = reads[0]
    assert after_first >= 1
    for n in range(5):
        output = await backend.predict({"question": f"again {n}?"})
        assert output.content.answer
    assert reads[0] == after_first  # lm15 alone reads them before each of the 5 requests


async def test_a_proxy_set_before_the_first_call_is_used_on_every_call(
    provider: LocalProvider, no_proxy_env: pytest.MonkeyPatch, fake_proxy: FakeProxy
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake_proxy.port}")
    backend = backend_for(provider)
    before = len(provider.requests)
    for question in ("first?", "second?"):
        with pytest.raises(Exception):  # noqa: B017,PT011 -- the proxy answers 502
            await backend.predict({"question": question})
    assert len(fake_proxy.lines) == 2
    for line in fake_proxy.lines:  # absolute-form: the request went to the proxy
        assert line.startswith(f"POST {provider.openai_api_base}/chat/completions")
    assert len(provider.requests) == before


async def test_no_proxy_still_applies_when_a_proxy_is_set(
    provider: LocalProvider, no_proxy_env: pytest.MonkeyPatch, fake_proxy: FakeProxy
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake_proxy.port}")
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    backend = backend_for(provider)
    output = await backend.predict({"question": "direct?"})
    assert output.content.answer
    assert fake_proxy.lines == []


async def test_a_proxy_set_after_the_first_call_is_not_seen_until_a_restart(
    provider: LocalProvider, no_proxy_env: pytest.MonkeyPatch, fake_proxy: FakeProxy
) -> None:
    backend = backend_for(provider)
    await backend.predict({"question": "first?"})
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake_proxy.port}")
    output = await backend.predict({"question": "second?"})
    assert output.content.answer
    assert fake_proxy.lines == []
    # a new worker (here: a new manager, whose models build new transports) reads them again
    with pytest.raises(Exception):  # noqa: B017,PT011 -- the proxy answers 502
        await backend_for(provider).predict({"question": "third?"})
    assert len(fake_proxy.lines) == 1
