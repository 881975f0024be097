"""Serving an example app under real ``uvicorn`` processes, for the slow multi-process tests.

Shared by the fleet, PostgreSQL and browser tests (``tests/`` is on ``sys.path`` through its
``conftest.py``). Every process started here is ended here, and only those: uvicorn runs in a
session of its own, so its workers are signalled as a group.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def the_apps_module(folder: Path) -> ModuleType:
    """The app's ``main`` module in ``folder``, imported here as the app imports it (the same
    class path, so that a program saved from the test is the one the app serves)."""
    spec = importlib.util.spec_from_file_location("main", folder / "main.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)
    return module


def copy_example(name: str, folder: Path) -> Path:
    """Copy an example's ``main.py`` and ``config/`` into ``folder`` (a fresh working dir)."""
    shutil.copy2(EXAMPLES / name / "main.py", folder / "main.py")
    shutil.copytree(EXAMPLES / name / "config", folder / "config")
    return folder


@contextmanager
def serving_app(
    folder: Path, *, env: Mapping[str, str], workers: int = 1, timeout_s: float = 120.0
) -> Iterator[str]:
    """``uvicorn main:app`` in ``folder`` (``--workers`` when more than one); its URL.

    Waits until every worker finished its startup (each logs it: one answer says nothing about
    the others) and the app is ready; stops the group with SIGINT, SIGKILL if it hangs.
    """
    port = free_port()
    log = folder / f"uvicorn-{port}.log"
    command = [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "info"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while log.read_text(errors="replace").count("Application startup complete") < workers:
            if process.poll() is not None:
                raise AssertionError(f"uvicorn exited:\n{log.read_text()[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the app did not start:\n{log.read_text()[-5000:]}")
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
