"""The fleet under Redis faults: event-loop lag, budget overshoot, recovery after a failover.

Run: ``.venv/bin/python benchmarks/bench_fleet_faults.py [--storm-s S] [--failovers N]``.

Everything runs against private ``redis-server`` processes on free loopback ports (nothing on
disk, stopped at the end) and the local provider (``llm_server.testing.LocalProvider``) on
127.0.0.1; Redis is reached through the tests' TCP proxy (``tests/fleet/_redis_proxy.py``,
imported from there), which delays every byte or switches to another server.

1. Event-loop lag during a failure storm: 40 tasks call through one fleet breaker whose model
   always fails (open -> half-open -> open rounds for ``--storm-s``), with every byte to Redis
   30 ms, then 80 ms late; a ticker sleeping 5 ms records how late it wakes (p99, median).
2. Budget overshoot: two processes (two ``ModelManager`` on the same Redis) and tenant acme
   with $5/day; 50 concurrent calls whose estimate is exactly $1 (100 max tokens at $10,000
   per million, prompt free), over HTTP to the local provider: how many were admitted and what
   the fleet's usage is afterwards, against the budget.
3. Recovery after a failover: a primary and its replica; the replica is promoted, the old
   primary made its replica, and the proxy switched to the new primary (as a DNS name or a
   virtual IP would be). Seconds until a breaker failure written from a sync caller reaches the
   new primary, ``--failovers`` times; each round starts once the replica has the primary's
   failures (its first sync done), and counts the fallbacks after the failover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "fleet"))  # the proxy and server helpers

from _redis_proxy import RedisProxy  # noqa: E402
from _redis_servers import port_of, redis_servers, wait_for_replica  # noqa: E402


def loop_lag_ms(url: str, storm_s: float) -> tuple[float, float, int]:
    """p99 and median event-loop lag (ms) and the number of ticks, during a failure storm."""
    from llm_server.core.circuit_breaker import CircuitBreaker
    from llm_server.core.errors import CircuitOpenError, ProviderUnavailableError
    from llm_server.fleet import FleetConnection, RedisBreakerStore

    async def storm() -> list[float]:
        connection = FleetConnection(url, prefix=f"bench-{uuid.uuid4().hex[:8]}", timeout_s=0.25)
        connection.check(required=False)
        breaker = CircuitBreaker(
            name="m", store=RedisBreakerStore(connection), failure_threshold=5, reset_timeout=0.2
        )
        connection.start()
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                expected = loop.time() + 0.005
                await asyncio.sleep(0.005)
                lags.append(loop.time() - expected)

        async def failing() -> None:
            await asyncio.sleep(0.01)
            raise ProviderUnavailableError("503 from the provider")

        async def caller() -> None:
            deadline = time.monotonic() + storm_s
            while time.monotonic() < deadline:
                with contextlib.suppress(ProviderUnavailableError, CircuitOpenError):
                    await breaker.call(failing)
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(caller() for _ in range(40)))
        done.set()
        await tick
        await connection.aclose()
        return lags

    lags = sorted(asyncio.run(storm()))
    return lags[int(len(lags) * 0.99)] * 1000, statistics.median(lags) * 1000, len(lags)


def overshoot(url: str, folder: Path) -> tuple[int, int, float, int]:
    """(admitted, refused, fleet's spent USD, provider requests) for 50 concurrent $1 calls."""
    import dspy

    from llm_server.core.budgets import tenant_scope
    from llm_server.core.config import FrameworkSettings
    from llm_server.core.errors import BudgetExceededError
    from llm_server.models.manager import ModelManager
    from llm_server.testing import LocalProvider, StaticConfigProvider

    class Summarize(dspy.Signature):
        """Summarize the text in one sentence."""

        text: str = dspy.InputField()
        summary: str = dspy.OutputField()

    prefix = f"bench-{uuid.uuid4().hex[:8]}"

    def manager(provider: LocalProvider) -> ModelManager:
        config = StaticConfigProvider(
            {
                "m": {
                    "model_name": "openai/gpt-4o-mini",
                    "api_base": provider.openai_api_base,
                    "api_key": "sk-test",
                    "max_tokens": 100,
                    "pricing": {"input_per_million": 0, "output_per_million": 10_000},
                }
            },
            budgets={"acme": {"per_day": {"cost_usd": 5}}},
        )
        settings = FrameworkSettings(
            otel_enabled=False,
            llm_programs_dir=folder / "programs",
            retry_max_attempts=1,
            redis_url=url,
            redis_prefix=prefix,
            redis_timeout_s=1.0,
        )
        return ModelManager(config_provider=config, settings=settings)

    async def run(provider: LocalProvider) -> tuple[int, int, float]:
        managers = [manager(provider) for _ in range(2)]
        backends = [m.reliable_backend(dspy.Predict(Summarize), "m") for m in managers]
        outcomes: list[bool] = []

        async def one(index: int) -> None:
            with tenant_scope("acme"):
                try:
                    await backends[index % 2].predict({"text": f"text number {index}"})
                except BudgetExceededError:
                    outcomes.append(False)
                else:
                    outcomes.append(True)

        await asyncio.gather(*(one(i) for i in range(50)))
        for made in managers:
            await made.aclose()  # its last charges are written at close
        reader = manager(provider)  # what the fleet holds once both have written everything
        try:
            ((used, _budget),) = (await reader.budgets.usage("acme")).values()
        finally:
            await reader.aclose()
        return outcomes.count(True), outcomes.count(False), used.cost_usd

    with LocalProvider(latency_s=0.3) as provider:  # the 50 calls overlap
        admitted, refused, spent = asyncio.run(run(provider))
        return admitted, refused, spent, len(provider.requests)


def recovery_s(folder: Path) -> tuple[float, int]:
    """Seconds from a failover until a write reaches the new primary, and the fallbacks."""
    from llm_server.core.circuit_breaker import CircuitBreaker
    from llm_server.core.errors import ProviderUnavailableError
    from llm_server.fleet import FleetConnection, RedisBreakerStore

    def fail() -> None:
        raise ProviderUnavailableError("503 from the provider")

    with redis_servers(folder, 2) as (primary, replica):
        replica.replicaof("127.0.0.1", port_of(primary))
        wait_for_replica(replica)  # its first sync done: later writes stream to it
        proxy = RedisProxy("127.0.0.1", port_of(primary)).start()
        connection = FleetConnection(proxy.url, prefix="bench", timeout_s=0.05)
        try:
            connection.check(required=False)
            breaker = CircuitBreaker(
                name="m", store=RedisBreakerStore(connection), failure_threshold=10_000
            )
            connection.start()
            key = connection.key("cb", "m")
            # failures in the primary before the failover (one that timed out on a loaded
            # machine fell back: the next ones are written once Redis is used again)
            deadline = time.monotonic() + 10
            while (written := int(primary.hget(key, "f") or 0)) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{written} failures reached the primary in 10 s")
                with contextlib.suppress(ProviderUnavailableError):
                    breaker.call_sync(fail)
                time.sleep(0.05)
            deadline = time.monotonic() + 5
            while int(replica.hget(key, "f") or 0) < written:  # replicated before the failover
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the replica never caught up: {written} failures on the primary, "
                        f"{int(replica.hget(key, 'f') or 0)} on the replica"
                    )
                time.sleep(0.01)
            fallbacks_before = connection.fallbacks
            replica.replicaof("no", "one")
            primary.replicaof("127.0.0.1", port_of(replica))
            proxy.target = ("127.0.0.1", port_of(replica))
            promoted_at = time.monotonic()
            while int(replica.hget(key, "f") or 0) <= written:
                if time.monotonic() - promoted_at > 30:
                    return float("inf"), connection.fallbacks - fallbacks_before
                with contextlib.suppress(ProviderUnavailableError):
                    breaker.call_sync(fail)
                time.sleep(0.05)
            return time.monotonic() - promoted_at, connection.fallbacks - fallbacks_before
        finally:
            connection.close()
            proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storm-s", type=float, default=5.0, help="failure storm per latency")
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # the fallbacks' expected errors; the figures say enough

    print(
        f"bench_fleet_faults: private redis-server on loopback, storm {args.storm_s:g} s per "
        f"latency, {args.failovers} failovers\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "one").mkdir()
        with redis_servers(folder / "one", 1) as (server,):
            proxy = RedisProxy("127.0.0.1", port_of(server)).start()
            try:
                print("1. event-loop lag, 40 tasks failing through a fleet breaker")
                for latency_ms in (30, 80):
                    proxy.latency_s = latency_ms / 1000
                    p99, median, ticks = loop_lag_ms(proxy.url, args.storm_s)
                    print(
                        f"  Redis {latency_ms} ms late: loop lag p99 {p99:.1f} ms, median "
                        f"{median:.1f} ms ({ticks} ticks of 5 ms; target p99 < 20 ms)"
                    )
            finally:
                proxy.close()
            url = f"redis://127.0.0.1:{port_of(server)}/0"
            admitted, refused, spent, requests = overshoot(url, folder)
            print("\n2. budget overshoot: 2 processes, $5/day, 50 concurrent calls estimated $1")
            print(
                f"  admitted {admitted} of 50 (refused {refused}; target <= 5), provider "
                f"requests {requests}, spent ${spent:.2f} of $5"
            )
        print("\n3. recovery after a failover (replica promoted, address switched)")
        times: list[float] = []
        fallbacks: list[int] = []
        for index in range(args.failovers):
            (folder / f"failover-{index}").mkdir()
            seconds, fell_back = recovery_s(folder / f"failover-{index}")
            times.append(seconds)
            fallbacks.append(fell_back)
            print(f"  failover {index + 1}: {seconds:.2f} s, {fell_back} fallbacks")
        print(
            f"  recovery seconds: {statistics.median(times):.2f} median, {max(times):.2f} max "
            f"(target <= 5 s; fallbacks at most {max(fallbacks)})"
        )


if __name__ == "__main__":
    main()
