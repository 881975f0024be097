"""A fleet with and without Redis: throughput, Redis round trips, limit checks, outages.

    python benchmarks/e2e/fleet.py [--quick] [--throughput | --aa redis|local]

Runs ``examples/fleet_app`` (breaker + rate limit on its model) under ``uvicorn --workers N``
against the local provider, with a private ``redis-server`` on a free loopback port; all of it
on 127.0.0.1, every loop bounded in time:

* **Throughput**: 2 workers with ``LLM_SERVER_REDIS_URL`` vs 2 workers without, c=64, provider
  latency 0, limits high enough never to refuse (so both check them on every call). Both apps
  are started, kept up for a block of short rounds (a warm-up, then a one-second window),
  each loaded by its own load generator kept running with its 64 connections open
  (``loadgen.py --serve``), the order rotated and reversed from round to round
  (``_procs.load_rounds``), as ``traffic_overhead.py`` does for capture; then stopped, and a
  new pair started for the next block (two apps started alike differ by a few percent for
  as long as they run: an A/A pair read 1.034, 90 % interval 1.021-1.054). On this shared
  2-core machine rounds of the same app moved by ~2x within one run (812-1664 req/s), so the
  ratio of two median rounds read 0.904 in one run and 0.975 in the next on the same code;
  the two loads of a round, ~2 s apart, see about the same machine, so the verdict is the
  median of the rounds' own ratios (with/without), with its IQR and 90 % bootstrap interval
  (``_paired.py``). Target: ratio >= 0.97. Beside it: the workers' CPU (every thread) per
  request served in the window (median round, and the paired ratio), and how the load
  generator's connections were dealt to the workers in each round. A worker keeps the
  connections it accepted, and one worker often accepts nearly all of a burst (each load this
  benchmark ran before opened its own and got whatever deal came), so after each load the
  generator opens new ones until each worker holds at least a quarter (``_fleet_apps.deal``).
  ``--aa redis|local`` runs two apps of one kind against each other instead: the spread of
  the design when there is nothing to find. Redis round trips per served request are the
  scripts Redis ran (``INFO commandstats``) during the Redis app's loads, background ones
  included (heartbeats, re-reads, flushes; pipelined writes count one each). One more round,
  not timed, on 2 workers of their own, counts their round trips to Redis where redis-py
  sends them (a pipeline is one), by command, background included. Target: <= 0.1 per
  request.
  What one run resolves (2026-12-07, this shared 2-core machine): A/A runs on one pair of
  apps (32 rounds) read 1.005 (90 %: 0.984-1.038) without Redis on both sides and 1.034
  (1.021-1.054) with Redis on both, outside its own interval: hence the blocks. In 3 blocks,
  Redis against Redis read 0.993 (0.929-1.022; blocks 0.993, 0.961, 0.993). With Redis /
  without, one pair per run: 1.008, 0.956, 0.981; in 3 blocks: 0.944 and 1.013 (other
  processes used ~0.9 cores in most rounds of the first, half of the second) and 0.918
  (0.905-0.950, quiet; blocks 0.907, 0.950, 0.925). The 168 rounds of those six runs
  together: 0.971 (0.955-0.986), their 106 quiet ones 0.958 (0.944-0.975); the workers' CPU
  per request with / without, median of the paired rounds, 0.975-1.073 from run to run. One
  run tells a difference of ~5 %, not the 3 % of the target; several runs are the verdict.
* **Limit check**: the added latency of one ``RateLimiter.acquire`` on Redis counters vs on
  local ones, in process (p50 / p99, microseconds).
* **Shared cache**: requests/s of a model with ``shared_cache:`` at a 90% hit rate vs the same
  model without, in process (provider latency 50 ms, 16 concurrent callers).
* **Outage**: 4 workers, provider down, one request in flight per worker: calls that reached
  the provider before every worker refused, and probes over 3 reset periods, with and
  without Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs
from e2e._fleet_apps import BODY, NO_LIMIT, PATH, RESET_S, fleet, redis_server
from e2e.fleet_throughput import measure_throughput, throughput


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
                "throughput": throughput(folder, provider, redis_url, quick=quick)
            }
        result["limit_check"] = limit_check(redis_url, quick=quick)
        result["cache"] = cache_throughput(redis_url, quick=quick)
        result["outage"] = {"redis": outage(folder, redis_url), "local": outage(folder, None)}
    result["elapsed_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--throughput", action="store_true", help="only the throughput part, with Redis vs without"
    )
    parser.add_argument(
        "--aa",
        choices=("redis", "local"),
        help="only the throughput part, A/A: two apps of this kind against each other",
    )
    args = parser.parse_args()
    if args.aa:
        result = measure_throughput((args.aa, args.aa), quick=args.quick)
    elif args.throughput:
        result = measure_throughput(("redis", "local"), quick=args.quick)
    else:
        result = measure(quick=args.quick)
    json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
