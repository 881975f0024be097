"""Start a whole fleet offline: redis-server, the local provider and 4 uvicorn workers.

    .venv/bin/python examples/fleet_app/run.py                      # http://127.0.0.1:8000
    .venv/bin/python examples/fleet_app/run.py --workers 2 --port 9000
    .venv/bin/python examples/fleet_app/run.py --redis-url redis://127.0.0.1:6379/0   # your Redis

Without ``--redis-url`` (or ``LLM_SERVER_REDIS_URL``) it starts a private ``redis-server`` on a
free port in a temporary folder (Debian: ``apt-get install redis-server``). Ctrl-C stops
everything it started. Try ``curl http://127.0.0.1:8000/models`` for the shared state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_server.testing import LocalProvider

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (no persistence) on a free port; its process and URL."""
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"redis-server did not start on port {port}")


def main() -> None:
    """Parse the arguments, start Redis, the provider and the workers; stop all on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--redis-url", default=os.environ.get("LLM_SERVER_REDIS_URL"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        redis = None
        url = args.redis_url
        if url is None:
            redis, url = start_redis(Path(folder))
            print(f"redis-server on {url}", flush=True)
        provider = LocalProvider().start()
        print(f"local test provider on {provider.base_url}", flush=True)
        env = {
            **os.environ,
            "LLM_SERVER_REDIS_URL": url,
            "LLM_SERVER_PROVIDER_URL": provider.base_url,
        }
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "main:app",
            "--port",
            str(args.port),
            "--workers",
            str(args.workers),
        ]
        workers = subprocess.Popen(command, cwd=HERE, env=env)
        print(f"try: curl http://127.0.0.1:{args.port}/models", flush=True)
        try:
            workers.wait()
        except KeyboardInterrupt:
            workers.send_signal(signal.SIGINT)
            workers.wait(timeout=30)
        finally:
            provider.stop()
            if redis is not None:
                redis.terminate()
                redis.wait(timeout=10)


if __name__ == "__main__":
    main()
