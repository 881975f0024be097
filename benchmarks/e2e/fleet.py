"""A fleet with and without Redis: throughput, Redis round trips, limit checks, outages.

    python benchmarks/e2e/fleet.py [--quick]

Runs ``examples/fleet_app`` (breaker + rate limit on its model) under ``uvicorn --workers N``
against the local provider, with a private ``redis-server`` on a free loopback port; all of it
on 127.0.0.1, every loop bounded in time:

* **Throughput**: 2 workers with ``LLM_SERVER_REDIS_URL`` vs 2 workers without, c=64, provider
  latency 0, limits high enough never to refuse (so both check them on every call); rounds
  alternate; the ratio is of the median rounds, with the workers' CPU per served request
  (median round) of each. Target: ratio >= 0.97. Redis round trips
  per served request are the scripts Redis ran (``INFO commandstats``), background ones
  included (heartbeats, re-reads, flushes; pipelined writes count one each). One more round,
  not timed, on 2 workers of their own, counts their round trips to Redis where redis-py sends
  them (a pipeline is one), by command, background included. Target: <= 0.1 per request.
* **Limit check**: the added latency of one ``RateLimiter.acquire`` on Redis counters vs on
  local ones, in process (p50 / p99, microseconds).
* **Shared cache**: requests/s of a model with ``shared_cache:`` at a 90% hit rate vs the same
  model without, in process (provider latency 50 ms, 16 concurrent callers).
* **Outage**: 4 workers, provider down, one request in flight per worker: calls that reached
  the provider before every worker refused, and probes over 3 reset periods, with and
  without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

ROOT = Path(__file__).resolve().parents[2]
FLEET_APP = ROOT / "examples" / "fleet_app"
PATH = "/programs/summarize"
BODY = '{{"text": "Request {n}: a fleet acts as one."}}'
RESET_S = 3.0  # examples/fleet_app/config/model_config.yml
NO_LIMIT = {"FLEET_REQUESTS_PER_MINUTE": "100000000", "FLEET_TOKENS_PER_MINUTE": "10000000000"}


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
def fleet(folder: Path, provider_url: str, *, workers: int, env: dict[str, str]) -> Iterator[Fleet]:
    """Serve a copy of the fleet example; stop every worker at the end."""
    app = folder / f"app-{_procs.free_port()}"
    shutil.copytree(FLEET_APP, app, ignore=shutil.ignore_patterns("run.py", "dspy_programs"))
    port = _procs.free_port()
    command = [_procs.PYTHON, "-m", "uvicorn", "main:app", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    process = subprocess.Popen(
        command, cwd=app, env=_procs.app_env(provider_url, env), start_new_session=True
    )
    try:
        _procs.wait_for_port(port, process)
        time.sleep(2.0 * workers)  # every worker past its startup, not only the first
        yield Fleet(process, port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _workers_cpu(pid: int) -> float:
    """CPU seconds used so far by the workers of the uvicorn process ``pid``."""
    import psutil

    total = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def _redis_calls(url: str) -> int:
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
        load = {"concurrency": 64, "raw": True, "path": PATH, "body": BODY}
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


def throughput(folder: Path, provider_url: str, redis_url: str, *, quick: bool) -> dict[str, Any]:
    """2 workers with Redis vs without, c=64: throughput ratio and Redis scripts/request."""
    window, warmup, rounds = (2.0, 1.0, 4) if quick else (4.0, 1.5, 8)
    shared_env = {**NO_LIMIT, "LLM_SERVER_REDIS_URL": redis_url, "LLM_SERVER_REDIS_PREFIX": "bench"}
    runs: dict[str, list[dict[str, Any]]] = {"redis": [], "local": []}
    commands: list[float] = []
    cpu: dict[str, list[float]] = {"redis": [], "local": []}
    with (
        fleet(folder, provider_url, workers=2, env=shared_env) as shared,
        fleet(folder, provider_url, workers=2, env=dict(NO_LIMIT)) as local,
    ):
        for index in range(rounds):
            order = (("redis", shared), ("local", local))
            for name, app in order if index % 2 == 0 else tuple(reversed(order)):
                before = _redis_calls(redis_url) if name == "redis" else 0
                cpu_before = _workers_cpu(app.process.pid)
                result = _procs.load(
                    app.port,
                    concurrency=64,
                    duration_s=window,
                    warmup_s=warmup,
                    raw=True,
                    path=PATH,
                    body=BODY,
                )
                served = max(1.0, result["completed"] + warmup * result["throughput"])
                cpu[name].append((_workers_cpu(app.process.pid) - cpu_before) / served * 1e6)
                if name == "redis":
                    commands.append((_redis_calls(redis_url) - before) / served)
                runs[name].append(result)
    pooled = {name: _pool(results) for name, results in runs.items()}
    # the median round of each: one stalled round (this shared machine has them, in A/A runs
    # too) moves a pooled mean by several percent and a median not at all
    medians = {
        name: statistics.median(r["throughput"] for r in results) for name, results in runs.items()
    }
    return {
        "workers": 2,
        "concurrency": 64,
        "apps": pooled,
        "ratio": medians["redis"] / medians["local"],
        "ratio_pooled": pooled["redis"]["throughput"] / pooled["local"]["throughput"],
        # the workers' CPU (every thread) per served request, median round (warm-up included)
        "cpu_us_per_request": {name: statistics.median(values) for name, values in cpu.items()},
        "redis_scripts_per_request": sum(commands) / len(commands),
        "round_trips_per_request": dict(
            sorted(
                counted_round(folder, provider_url, shared_env, window=window).items(),
                key=lambda item: -item[1],
            )
        ),
    }


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    completed = sum(run["completed"] for run in runs)
    window = sum(run["window_s"] for run in runs)
    latencies = sorted(x for run in runs for x in run["latencies_ms"])
    errors = sum(run["errors"] for run in runs)
    return {
        "completed": completed,
        "errors": errors,
        "throughput": completed / window if window else 0.0,
        "p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "rounds": [round(run["throughput"], 1) for run in runs],
    }


def limit_check(redis_url: str, *, quick: bool) -> dict[str, Any]:
    """p50/p99 of one ``acquire`` on Redis counters vs local ones, in microseconds."""
    from llm_server.core.rate_limit import LocalLimitCounters, RateLimiter
    from llm_server.fleet import FleetConnection, RedisLimitCounters

    calls = 1000 if quick else 5000

    async def timed(limiter: RateLimiter) -> list[float]:
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            await limiter.acquire(300)
            samples.append((time.perf_counter() - start) * 1e6)
        return sorted(samples)

    async def both() -> dict[str, Any]:
        connection = FleetConnection(redis_url, prefix="bench-limit", timeout_s=0.05)
        try:
            options: dict[str, Any] = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12}
            shared = await timed(
                RateLimiter("m", counters=RedisLimitCounters(connection), **options)
            )
            local = await timed(RateLimiter("m", counters=LocalLimitCounters(), **options))
        finally:
            await connection.aclose()
            connection.close()
        out: dict[str, Any] = {"calls": calls}
        for name, samples in (("redis", shared), ("local", local)):
            out[name] = {
                "p50_us": samples[len(samples) // 2],
                "p99_us": samples[int(0.99 * (len(samples) - 1))],
            }
        out["added_p99_us"] = out["redis"]["p99_us"] - out["local"]["p99_us"]
        return out

    return asyncio.run(both())


def cache_throughput(redis_url: str, *, quick: bool) -> dict[str, Any]:
    """Requests/s with a 90% shared-cache hit rate vs the same model without a cache.

    In process: the local provider answers after 50 ms; 16 concurrent callers; every tenth
    request is new, the others repeat one already answered (and stored).
    """
    import anyio
    import dspy

    from llm_server.core.config import FrameworkSettings
    from llm_server.models.manager import ModelManager
    from llm_server.testing import LocalProvider, StaticConfigProvider

    total = 200 if quick else 600

    class Ask(dspy.Signature):
        """Answer the question."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    async def run(models: ModelManager, model_id: str) -> float:
        backend = models.reliable_backend(dspy.Predict(Ask), model_id)
        warm = [f"question {n}" for n in range(total // 10)]
        for question in warm:  # the repeated tenth, answered once and stored
            await backend.predict({"question": question})
        await anyio.sleep(0.3)
        questions = [f"new {n}" if n % 10 == 0 else warm[n % len(warm)] for n in range(total)]
        started = time.perf_counter()
        limiter = anyio.Semaphore(16)

        async def one(question: str) -> None:
            async with limiter:
                await backend.predict({"question": question})

        async with anyio.create_task_group() as group:
            for question in questions:
                group.start_soon(one, question)
        return total / (time.perf_counter() - started)

    async def both() -> dict[str, Any]:
        with LocalProvider(latency_s=0.05) as provider:
            base = {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-bench",
            }
            config = StaticConfigProvider(
                {"cached": {**base, "shared_cache": {}}, "plain": dict(base)}
            )
            settings = FrameworkSettings(
                otel_enabled=False,
                redis_url=redis_url,
                redis_prefix="bench-cache",
                retry_max_attempts=1,
            )
            models = ModelManager(config_provider=config, settings=settings)
            try:
                cached = await run(models, "cached")
                plain = await run(models, "plain")
                cache = models.caches["cached"]
                return {
                    "requests": total,
                    "provider_latency_ms": 50,
                    "concurrency": 16,
                    "cached_rps": cached,
                    "plain_rps": plain,
                    "ratio": cached / plain,
                    "hits": cache.hits,
                    "misses": cache.misses,
                }
            finally:
                await models.aclose()

    return anyio.run(both)


def outage(folder: Path, redis_url: str | None) -> dict[str, Any]:
    """4 workers, provider down, one request in flight per worker: what reaches the provider."""
    env = dict(NO_LIMIT)
    if redis_url is not None:
        env |= {"LLM_SERVER_REDIS_URL": redis_url, "LLM_SERVER_REDIS_PREFIX": "bench-outage"}
    with _procs.provider() as provider, fleet(folder, provider.base_url, workers=4, env=env) as app:
        _procs.load(app.port, concurrency=4, duration_s=1.0, warmup_s=0.0, path=PATH, body=BODY)
        provider.command("down")
        _procs.load(app.port, concurrency=4, duration_s=1.0, warmup_s=0.0, path=PATH, body=BODY)
        tripped = int(provider.command("fired"))
        _procs.load(
            app.port,
            concurrency=4,
            duration_s=3 * RESET_S + 0.5,
            warmup_s=0.0,
            path=PATH,
            body=BODY,
        )
        probes = int(provider.command("fired")) - tripped
        provider.command("up")
    return {"workers": 4, "calls_reaching_failing_provider": tripped, "probes_in_3_periods": probes}


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Every part of the fleet benchmark."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        folder = Path(tmp)
        with _procs.provider() as provider:
            result: dict[str, Any] = {
                "throughput": throughput(folder, provider.base_url, redis_url, quick=quick)
            }
        result["limit_check"] = limit_check(redis_url, quick=quick)
        result["cache"] = cache_throughput(redis_url, quick=quick)
        result["outage"] = {"redis": outage(folder, redis_url), "local": outage(folder, None)}
    result["elapsed_s"] = time.perf_counter() - started
    return result


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
