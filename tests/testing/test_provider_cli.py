"""``python -m llm_server.testing`` serves in the foreground and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_on_signal(signum: int) -> None:
    command = [sys.executable, "-m", "llm_server.testing", "--port", "0", "--reply", "hi"]
    command += ["--no-usage", "--latency-ms", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("LocalProvider listening on http://127.0.0.1:")
        base_url = first.rsplit(" ", 1)[1].strip()
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        data = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=5).json()
        assert data["choices"][0]["message"]["content"] == "hi"
        assert "usage" not in data
        process.send_signal(signum)
        assert process.wait(timeout=5) == 0
        assert process.stdout.read().strip().endswith("stopped")
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
