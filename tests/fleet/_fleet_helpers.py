"""Helpers shared by the fleet tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
from pytest_redis.executor import RedisExecutor

from llm_server.fleet import FleetConnection

Connect = Callable[..., FleetConnection]
"""The ``connect`` fixture: ``connect(url=..., timeout_s=...)`` -> a new FleetConnection."""


def url_of(executor: RedisExecutor) -> str:
    """The ``redis://`` URL of a private server."""
    return f"redis://{executor.host}:{executor.port}/0"


REPO = Path(__file__).resolve().parents[2]
FLEET_APP = REPO / "examples" / "fleet_app"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn_fleet(
    folder: Path, *, workers: int, env: Mapping[str, str], timeout_s: float = 120.0
) -> Iterator[str]:
    """``examples/fleet_app`` (copied to ``folder``) under ``uvicorn --workers N``; its URL.

    Waits until every worker finished its startup (each logs it: the first answer says
    nothing about the others), stops them with SIGINT at the end, SIGKILL if they hang.
    """
    shutil.copy2(FLEET_APP / "main.py", folder / "main.py")
    shutil.copytree(FLEET_APP / "config", folder / "config")
    port = free_port()
    log = folder / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "info"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are ours to end, and only they
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while log.read_text(errors="replace").count("Application startup complete") < workers:
            if process.poll() is not None:
                raise AssertionError(f"uvicorn exited:\n{log.read_text()[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not all start:\n{log.read_text()[-5000:]}")
            time.sleep(0.1)
        assert httpx.get(f"{url}/health/ready", timeout=5.0).status_code == 200
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
