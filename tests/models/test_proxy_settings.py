"""A native engine's transport reads the proxy variables once, when first used, as httpx does.

lm15 reads them (every environment variable) before every request; with none set, the
library's transports stop reading them after the first call. A proxy set before that first call
is still used, request by request; one set later is not seen (documented: restart the worker).
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import dspy
import pytest
from _model_helpers import MakeManager
from dspy._vendor.lm15.transports import _proxy

from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


def backend_for(make_manager: MakeManager) -> Any:
    """A new manager's model (new connection pools, which read the variables anew)."""
    manager = make_manager({"m": {"model_name": "openai/gpt-4o-mini", "api_key": "sk-test"}})
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


@pytest.fixture
def proxy_set(no_proxy_env: pytest.MonkeyPatch, fake_proxy: FakeProxy) -> FakeProxy:
    """HTTP_PROXY names the fake proxy before the first call."""
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake_proxy.port}")
    return fake_proxy


def counting(monkeypatch: pytest.MonkeyPatch, *, first_fails: bool = False) -> list[int]:
    """Count every read of the proxy variables, lm15's and the library's (``first_fails``:
    the first read raises, as when another thread changes the environment under it)."""
    reads = [0]
    real = urllib.request.getproxies

    def getproxies() -> dict[str, str]:
        reads[0] += 1
        if first_fails and reads[0] == 1:
            raise KeyError("HTTP_PROXY")
        return real()

    monkeypatch.setattr(_proxy, "getproxies", getproxies)
    monkeypatch.setattr(urllib.request, "getproxies", getproxies)
    return reads


async def test_without_a_proxy_the_variables_are_read_once_not_per_request(
    provider: LocalProvider, make_manager: MakeManager, no_proxy_env: pytest.MonkeyPatch
) -> None:
    reads = counting(no_proxy_env)
    backend = backend_for(make_manager)
    await backend.predict({"question": "first?"})
    after_first = reads[0]
    assert after_first >= 1
    for n in range(5):
        output = await backend.predict({"question": f"again {n}?"})
        assert output.content.answer
    assert reads[0] == after_first  # lm15 alone reads them before each of the 5 requests


async def test_a_proxy_set_before_the_first_call_is_used_on_every_call(
    provider: LocalProvider, make_manager: MakeManager, proxy_set: FakeProxy
) -> None:
    fake_proxy = proxy_set
    backend = backend_for(make_manager)
    before = len(provider.requests)
    for question in ("first?", "second?"):
        with pytest.raises(Exception):  # noqa: B017,PT011 -- the proxy answers 502
            await backend.predict({"question": question})
    assert len(fake_proxy.lines) == 2
    for line in fake_proxy.lines:  # absolute-form: the request went to the proxy
        assert line.startswith(f"POST {provider.openai_api_base}/chat/completions")
    assert len(provider.requests) == before


async def test_no_proxy_still_applies_when_a_proxy_is_set(
    make_manager: MakeManager, no_proxy_env: pytest.MonkeyPatch, proxy_set: FakeProxy
) -> None:
    fake_proxy = proxy_set
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    backend = backend_for(make_manager)
    output = await backend.predict({"question": "direct?"})
    assert output.content.answer
    assert fake_proxy.lines == []


async def test_a_proxy_set_after_the_first_call_is_not_seen_until_a_restart(
    provider: LocalProvider,
    make_manager: MakeManager,
    no_proxy_env: pytest.MonkeyPatch,
    fake_proxy: FakeProxy,
) -> None:
    backend = backend_for(make_manager)
    await backend.predict({"question": "first?"})
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake_proxy.port}")
    output = await backend.predict({"question": "second?"})
    assert output.content.answer
    assert fake_proxy.lines == []
    # a new worker (here: a new manager, whose models build new transports) reads them again
    with pytest.raises(Exception):  # noqa: B017,PT011 -- the proxy answers 502
        await backend_for(make_manager).predict({"question": "third?"})
    assert len(fake_proxy.lines) == 1


async def test_a_failed_first_read_leaves_the_per_request_reads_in_place(
    provider: LocalProvider, make_manager: MakeManager, no_proxy_env: pytest.MonkeyPatch
) -> None:
    reads = counting(no_proxy_env, first_fails=True)  # the first is the library's one read
    backend = backend_for(make_manager)
    for n in range(3):
        output = await backend.predict({"question": f"still served {n}?"})
        assert output.content.answer
    assert reads[0] == 1 + 3  # lm15 reads them before each request, as without the library
