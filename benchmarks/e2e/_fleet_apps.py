"""The fleet example's processes for ``fleet.py`` and ``fleet_throughput.py``: a private
redis-server, ``uvicorn --workers N`` serving ``examples/fleet_app``, how the load generator's
connections were dealt to its workers, and Redis's counts of what the workers ran."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e import _procs

ROOT = Path(__file__).resolve().parents[2]
FLEET_APP = ROOT / "examples" / "fleet_app"
PATH = "/programs/summarize"
BODY = '{{"text": "Request {n}: a fleet acts as one."}}'
RESET_S = 3.0  # examples/fleet_app/config/model_config.yml
NO_LIMIT = {"FLEET_REQUESTS_PER_MINUTE": "100000000", "FLEET_TOKENS_PER_MINUTE": "10000000000"}


def app_env(kind: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The fleet example's environment with limits that never refuse: ``local`` (no Redis) or
    with the Redis at ``redis_url`` under ``prefix``."""
    if kind == "local":
        return dict(NO_LIMIT)
    return {**NO_LIMIT, "LLM_SERVER_REDIS_URL": redis_url, "LLM_SERVER_REDIS_PREFIX": prefix}


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server (no persistence) on a free loopback port; its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = _procs.free_port()
    with tempfile.TemporaryDirectory() as folder:
        command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", folder]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            _procs.wait_for_port(port, process)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _procs.stop(process)


@dataclass
class Fleet:
    """``uvicorn --workers N`` serving the fleet example."""

    process: subprocess.Popen[bytes]
    port: int


@contextlib.contextmanager
def fleet(
    folder: Path, provider_url: str, *, workers: int, env: dict[str, str], ready: bool = True
) -> Iterator[Fleet]:
    """Serve a copy of the fleet example; stop every worker at the end. With ``ready=False``
    it is handed over as soon as it was started (to start several at once; the caller waits
    with :func:`wait_ready`)."""
    app = folder / f"app-{_procs.free_port()}"
    shutil.copytree(FLEET_APP, app, ignore=shutil.ignore_patterns("run.py", "dspy_programs"))
    port = _procs.free_port()
    command = [_procs.PYTHON, "-m", "uvicorn", "main:app", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    process = subprocess.Popen(
        command, cwd=app, env=_procs.app_env(provider_url, env), start_new_session=True
    )
    try:
        if ready:
            wait_ready([Fleet(process, port)], workers=workers)
        yield Fleet(process, port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_ready(apps: list[Fleet], *, workers: int) -> None:
    """Return once every one of ``apps`` listens and its workers are past their startup."""
    for app in apps:
        _procs.wait_for_port(app.port, app.process)
    time.sleep(2.0 * workers)  # every worker past its startup, not only the first


def redis_calls(url: str) -> int:
    """Scripts run so far: every fleet round trip is one (commandstats also counts the
    commands a script runs inside, which are no round trips)."""
    import redis

    client = redis.Redis.from_url(url, protocol=2)
    try:
        stats = client.info("commandstats")
        return sum(
            int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
        )
    finally:
        client.close()


COUNTER = Path(__file__).resolve().parent / "count_round_trips"


def _round_trips(folder: Path) -> Counter[str]:
    """Round trips by command so far, summed over the counted workers' files."""
    total: Counter[str] = Counter()
    for path in folder.glob("*.json"):
        total.update(json.loads(path.read_text()))
    return total


def counted_round(
    folder: Path, provider_url: str, env: dict[str, str], *, window: float
) -> dict[str, float]:
    """Round trips to Redis per served request, by command, background included: 2 workers
    of their own whose redis-py sends are counted (``count_round_trips/sitecustomize.py``),
    one round at c=64 (not timed: counting costs a little CPU)."""
    counts = folder / f"round-trips-{_procs.free_port()}"
    counts.mkdir()
    path = os.pathsep.join(p for p in (str(COUNTER), os.environ.get("PYTHONPATH", "")) if p)
    env = {**env, "PYTHONPATH": path, "LLM_SERVER_BENCH_ROUND_TRIPS": str(counts)}
    with fleet(folder, provider_url, workers=2, env=env) as app:
        load: dict[str, Any] = {"concurrency": 64, "raw": True, "path": PATH, "body": BODY}
        _procs.load(app.port, duration_s=1.0, warmup_s=0.0, **load)  # connections, leases
        time.sleep(0.5)  # every worker wrote its counts (every 0.2 s)
        before = _round_trips(counts)
        result = _procs.load(app.port, duration_s=window, warmup_s=0.0, **load)
        time.sleep(0.5)  # (the counts then include up to 0.5 s more of background work)
        after = _round_trips(counts)
    served = max(1.0, float(result["completed"]))
    return {
        name: (after[name] - before[name]) / served for name in after if after[name] > before[name]
    }


CONCURRENCY = 64


def redis_pid(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url, protocol=2)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def connections_per_worker(app: Fleet) -> list[int]:
    """The load generator's open connections each worker holds, most first (once the workers
    accepted all of them, or after 2 s)."""
    import psutil

    deadline = time.monotonic() + 2.0
    while True:
        counts = []
        for child in psutil.Process(app.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                held = [
                    c
                    for c in child.net_connections(kind="tcp")
                    if c.laddr and c.laddr.port == app.port and c.status == psutil.CONN_ESTABLISHED
                ]
                if held:
                    counts.append(len(held))
        if sum(counts) >= CONCURRENCY or time.monotonic() > deadline:
            return sorted(counts, reverse=True)
        time.sleep(0.01)


def deal(generator: _procs.LoadGenerator, app: Fleet, *, attempts: int = 20) -> list[int]:
    """Have the load generator open its connections anew until each of the 2 workers holds at
    least a quarter of them (or ``attempts`` ran out); how they were dealt.

    A worker keeps the connections it accepted, and one worker often accepts nearly all of a
    burst: in an A/A run (no Redis against no Redis, 32 rounds, connections dealt anew but
    unchecked each round) the busiest worker held 32-64 of 64; up to 60 the app's throughput
    did not depend on it, with 61-64 it fell by ~15 %, and rounds where only one app had such
    a deal read ratios of 0.55-0.63.
    """
    split: list[int] = []
    for _ in range(attempts):
        generator.reconnect()
        split = connections_per_worker(app)
        if len(split) == 2 and split[-1] >= CONCURRENCY // 4:
            break
    return split
