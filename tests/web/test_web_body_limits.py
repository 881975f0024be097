"""Oversized bodies stop at the door: 413 with the envelope, nothing read past the limit."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psutil
import pytest
from _web_helpers import MakeApp, Summarize, serving
from fastapi import FastAPI, Request

from llm_server.fastapi import BodyLimitMiddleware, add_program_endpoint, install_error_handlers
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A body sent without Content-Length (chunked), ``total`` bytes of JSON-ish text."""
    yield b'{"text": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"}'


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "payload_too_large"
    assert "at most" in error["message"]


@pytest.mark.parametrize("middleware", [True, False])
async def test_a_program_route_refuses_a_body_over_the_limit(
    make_app: MakeApp, provider: LocalProvider, middleware: bool
) -> None:
    app = make_app(middleware=middleware, max_request_bytes=1000)
    async with serving(app) as client:
        small = await client.post("/programs/summarize", json={"text": "short"})
        declared = await client.post("/programs/summarize", json={"text": "a" * 2000})
        streamed = await client.post("/programs/summarize", content=chunks(5000))
        again = await client.post("/programs/summarize", json={"text": "short again"})
    assert small.status_code == again.status_code == 200
    assert_413(declared)
    assert_413(streamed)
    assert len(provider.requests) == 2  # the refused ones never reached the provider


async def test_an_endpoint_can_set_its_own_limit(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    app = make_app()  # the settings allow 2 MiB

    add_program_endpoint(
        app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini",
        path="/tight", max_request_bytes=100,
    )  # fmt: skip
    async with serving(app) as client:
        tight = await client.post("/tight", json={"text": "a" * 200})
        roomy = await client.post("/programs/summarize", json={"text": "a" * 200})
    assert_413(tight)
    assert roomy.status_code == 200


async def test_the_middleware_bounds_the_hosts_own_routes() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=1000)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        fits = await client.post("/echo", content=b"x" * 1000)
        declared = await client.post("/echo", content=b"x" * 1001)
        streamed = await client.post("/echo", content=chunks(5000))
    assert fits.json() == {"bytes": 1000}
    assert_413(declared)
    assert_413(streamed)  # not the 400 FastAPI makes of an error raised while reading


# --- over a real socket: time and memory ----------------------------------------------------

APP = """
import dspy
from fastapi import FastAPI
from llm_server.fastapi import (
    RequestContextMiddleware, add_program_endpoint, install_error_handlers, llm_server_lifespan,
)

class Summarize(dspy.Signature):
    text: str = dspy.InputField()
    summary: str = dspy.OutputField()

app = FastAPI(lifespan=llm_server_lifespan(programs=[Summarize], config_path="models.yml"))
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="m")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, LocalProvider]]:
    folder = tmp_path_factory.mktemp("limits")
    with LocalProvider() as provider:
        (folder / "app.py").write_text(APP)
        (folder / "models.yml").write_text(
            f"models:\n  m:\n    model_name: openai/gpt-4o-mini\n"
            f"    api_base: {provider.openai_api_base}\n"
        )
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level",
             "warning"],
            cwd=folder, env={**os.environ, "LLM_PROGRAMS_DIR": str(folder / "programs")},
        )  # fmt: skip
        try:
            for _ in range(600):  # bounded: 60 s
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            httpx.post(f"http://127.0.0.1:{port}/programs/summarize", json={"text": "warm"})
            yield port, process.pid, provider
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def post_oversized(port: int, size: int, *, declared: bool) -> tuple[int, float]:
    """Send ``size`` bytes, or until the server answers; (status, seconds to the answer)."""
    head = "POST /programs/summarize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {size}\r\n" if declared else "Transfer-Encoding: chunked\r\n"
    chunk = b"a" * (256 * 1024)
    payload = chunk if declared else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall(head.encode() + b"\r\n")
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < size and not select.select([sock], [], [], 0)[0]:
                sock.sendall(payload)  # until the server answers (or stops reading)
                sent += len(chunk)
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        elapsed = time.perf_counter() - started
    return int(answer.split(b" ", 2)[1]), elapsed


@pytest.mark.parametrize("mib", [8, 32, 60])
def test_a_huge_declared_body_is_refused_at_once_without_reading_it(
    server: tuple[int, int, LocalProvider], mib: int
) -> None:
    port, pid, provider = server
    before_requests = len(provider.requests)
    rss_before = psutil.Process(pid).memory_info().rss
    status, elapsed = post_oversized(port, mib * MIB, declared=True)
    rss_after = psutil.Process(pid).memory_info().rss
    assert status == 413
    assert elapsed < 0.05
    assert rss_after - rss_before < 5 * MIB
    assert len(provider.requests) == before_requests


def test_a_huge_chunked_body_is_refused_at_the_limit(
    server: tuple[int, int, LocalProvider],
) -> None:
    port, pid, provider = server
    before_requests = len(provider.requests)
    rss_before = psutil.Process(pid).memory_info().rss
    status, _ = post_oversized(port, 32 * MIB, declared=False)
    rss_after = psutil.Process(pid).memory_info().rss
    assert status == 413
    assert rss_after - rss_before < 5 * MIB
    assert len(provider.requests) == before_requests
