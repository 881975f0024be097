"""Helpers to run the example apps: in-process from a copy, or as a real server."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def copy_example(name: str, destination: Path) -> Path:
    """Copy an example's ``main.py`` and ``config/`` (not its stored programs) to ``destination``.

    The apps read ``config/model_config.yml`` and write ``dspy_programs/`` relative to the
    working directory; running a fresh copy keeps the checkout clean and every run fresh.
    """
    target = destination / name
    target.mkdir(parents=True)
    shutil.copy2(EXAMPLES / name / "main.py", target / "main.py")
    shutil.copytree(EXAMPLES / name / "config", target / "config")
    return target


def load_example(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider_url: str
) -> ModuleType:
    """Import an example app from a copy, with the copy as working directory.

    ``LLM_SERVER_PROVIDER_URL`` points its config at ``provider_url``.
    """
    folder = copy_example(name, tmp_path)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LLM_SERVER_PROVIDER_URL", provider_url)
    for variable in ("OTEL_ENABLED", "LLM_CONFIG_PATH", "LLM_PROGRAMS_DIR"):
        monkeypatch.delenv(variable, raising=False)
    module_name = f"example_{name}_{abs(hash(tmp_path))}"
    spec = importlib.util.spec_from_file_location(module_name, folder / "main.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered like `uvicorn main:app` does: DSPy resolves string annotations through it.
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield an in-process client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=30
        ) as client:
            yield client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    timeout_s: float = 60.0,
    poll_s: float = 0.05,
) -> None:
    """Poll ``url`` until it answers (any status), failing early if ``process`` exits.

    A failure shows the end of ``log`` (the server's output; an install's can be long).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}:\n{log.read_text()[-5000:]}"
            )
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(poll_s)
    raise AssertionError(f"{url} did not answer within {timeout_s} s:\n{log.read_text()[-5000:]}")


@contextmanager
def running(
    command: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    url: str,
    log: Path,
    timeout_s: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` as a server, wait until ``url`` answers, stop it (SIGINT) at the end.

    Its output goes to ``log`` (a pipe nobody reads could fill up and stall the server).
    """
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_until_up(url, process, log, timeout_s=timeout_s)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> int:
    """Stop a server like Ctrl-C does (SIGINT, uvicorn's graceful shutdown); its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


PYTHON = sys.executable
"""The interpreter running the tests (the project venv)."""
