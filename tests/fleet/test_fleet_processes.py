"""A real fleet: ``examples/fleet_app`` under ``uvicorn --workers 4``, a private redis-server
and the local provider; counts what reaches the provider. Bounded: each test stops by itself
and ends only the processes it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from _fleet_helpers import FLEET_APP, url_of, uvicorn_fleet
from pytest_redis.executor import RedisExecutor

from _app_processes import free_port
from llm_server.testing import LocalProvider

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(300)]

WORKERS = 4
THRESHOLD = 5  # examples/fleet_app/config/model_config.yml
RESET_S = 3.0
BODY = {"text": "A fleet acts as one."}


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


def fleet_env(provider: LocalProvider, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "LLM_SERVER_REDIS_URL": redis_url,
        "LLM_SERVER_REDIS_PREFIX": prefix,
        "LLM_SERVER_PROVIDER_URL": provider.base_url,
        "OTEL_ENABLED": "false",
        "FLEET_REQUESTS_PER_MINUTE": "1000000",
        "FLEET_TOKENS_PER_MINUTE": "1000000000",
        **extra,
    }


async def load(
    url: str, *, seconds: float, concurrency: int, pause_s: float = 0.0
) -> list[tuple[int, float]]:
    """Send requests from ``concurrency`` loops for ``seconds``: (status, latency) of each."""
    results: list[tuple[int, float]] = []
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def loop() -> None:
            while time.monotonic() < end:
                start = time.monotonic()
                response = await client.post("/programs/summarize", json=BODY)
                results.append((response.status_code, time.monotonic() - start))
                if pause_s:
                    await anyio.sleep(pause_s)

        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(loop)
    return results


@pytest.mark.parametrize("in_flight", [4, 8])
async def test_a_failing_provider_trips_the_fleet_and_one_probe_per_period_reaches_it(
    provider: LocalProvider,
    tmp_path: Path,
    private_redis: RedisExecutor,
    prefix: str,
    in_flight: int,
) -> None:
    provider.clear_faults()
    env = fleet_env(provider, url_of(private_redis), prefix)
    with uvicorn_fleet(tmp_path, workers=WORKERS, env=env) as url:
        assert {status for status, _ in await load(url, seconds=1, concurrency=4)} == {200}
        down = provider.add_fault(500)
        # requests in flight (connections, spread over the workers as they accept them): the
        # fleet trips on its 5th failure, when up to in_flight - 1 other calls were admitted,
        # and each request in flight starts again until its worker hears of the trip: once
        # while the news is faster than a request, twice when it takes two turns (a loaded
        # machine); docs/how-to/fleet.md, "How many calls reach a failing provider"
        await load(url, seconds=1.0, concurrency=in_flight)
        tripped = provider.fired(down)
        print(f"calls that reached the failing provider, {in_flight} in flight: {tripped}")
        assert tripped <= THRESHOLD + 3 * in_flight - 1, tripped

        # still down over 3 reset periods, traffic flowing: one probe per period, fleet-wide
        before = provider.fired(down)
        results = await load(url, seconds=3 * RESET_S + 0.5, concurrency=4, pause_s=0.02)
        probes = provider.fired(down) - before
        print(f"probes over 3 reset periods: {probes}")
        assert probes <= 3 + 2, probes
        assert {status for status, _ in results} <= {500, 502, 503}

        provider.remove_rule(down)
        await anyio.sleep(RESET_S + 0.5)  # the next probe succeeds and closes the breaker
        await load(url, seconds=0.5, concurrency=2)
        await anyio.sleep(0.3)
        results = await load(url, seconds=2, concurrency=8)
        assert results
        assert {status for status, _ in results} == {200}  # every request succeeds


async def test_a_fleet_limit_of_30_per_minute_holds_across_4_workers(
    provider: LocalProvider, tmp_path: Path, private_redis: RedisExecutor, prefix: str
) -> None:
    provider.clear_faults()
    env = fleet_env(
        provider,
        url_of(private_redis),
        prefix,
        FLEET_REQUESTS_PER_MINUTE="30",
        FLEET_MAX_WAIT_S="0",
    )
    with uvicorn_fleet(tmp_path, workers=WORKERS, env=env) as url:
        provider.clear()
        results = await load(url, seconds=6, concurrency=16)
        reached = len(provider.requests)
        print(f"calls that reached the provider under a 30/minute limit: {reached}")
        assert reached <= 33, reached
        statuses = [status for status, _ in results]
        assert statuses.count(200) == reached
        assert set(statuses) == {200, 429}


async def test_redis_killed_mid_load_loses_no_request(
    provider: LocalProvider, tmp_path: Path, killable_redis: RedisExecutor, prefix: str
) -> None:
    provider.clear_faults()
    env = fleet_env(provider, url_of(killable_redis), prefix)
    with uvicorn_fleet(tmp_path, workers=WORKERS, env=env) as url:
        results: list[tuple[int, float]] = []

        async def traffic() -> None:
            results.extend(await load(url, seconds=8, concurrency=16))

        async with anyio.create_task_group() as group:
            group.start_soon(traffic)
            await anyio.sleep(2)
            killable_redis.stop()  # mid-load: workers time out once, then go on alone
            await anyio.sleep(3)
            await anyio.to_thread.run_sync(killable_redis.start)

        served = sum(1 for status, _ in results if status == 200)
        slowest = max(latency for _, latency in results)
        print(f"Redis killed mid-load: {served}/{len(results)} served, slowest {slowest:.2f}s")
        assert results
        assert served >= 0.95 * len(results), (served, len(results))
        assert slowest < 5.0
        async with httpx.AsyncClient(base_url=url) as client:
            deadline = time.monotonic() + 10  # each worker pings every second and resyncs
            shared = 0
            while shared < 8:  # several answers in a row, from whichever workers
                assert time.monotonic() < deadline, "workers did not resync"
                body = (await client.get("/models")).json()
                shared = shared + 1 if body["fleet"]["shared"] else 0
                await anyio.sleep(0.05)


def test_the_fleet_example_starts_everything_with_one_command(tmp_path: Path) -> None:
    """``python examples/fleet_app/run.py``: redis-server, the provider and the workers; Ctrl-C
    ends all of them."""
    port = free_port()
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVER_REDIS")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(FLEET_APP / "run.py"), "--workers", "2", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the whole group, as in a terminal
        )
    try:
        deadline = time.monotonic() + 120
        members = 0
        while members < 2:  # both workers beat in Redis
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/models", timeout=2).json()
                members = body["fleet"]["members"] if body["fleet"]["shared"] else 0
            except (httpx.TransportError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/programs/summarize", json=BODY, timeout=30)
        assert answer.status_code == 200, answer.text
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("redis-server" in " ".join(c.cmdline()) for c in children)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [c.pid for c in alive]
