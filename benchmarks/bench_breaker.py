"""Circuit-breaker overhead: ours against aiobreaker in the same run, and under concurrency.

Run: ``.venv/bin/python benchmarks/bench_breaker.py [--calls N] [--rounds N]``.

1. Per-call overhead in the closed state: a no-op coroutine awaited bare, through
   ``CircuitBreaker.call`` (consecutive policy, and a count-window rate policy) and through
   ``aiobreaker.CircuitBreaker.call_async``. The variants are timed alternately in many short
   rounds and each keeps its best round, so a noisy neighbour on a shared machine skews no
   variant in particular; overhead = guarded time minus bare time, per call. Prints the ratio of our
   overhead to aiobreaker's (<= 1.0 means we are not slower).
2. Throughput: 100 concurrent guarded calls of 10 ms each (``asyncio.sleep(0.01)``), against
   the same 100 calls unguarded, alternately; prints guarded/unguarded wall time (target
   within 5 %, i.e. <= 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import aiobreaker

from llm_server.core.circuit_breaker import CircuitBreaker

Call = Callable[[], Awaitable[object]]


async def noop() -> int:
    """The guarded operation of the overhead benchmark: returns at once."""
    return 1


async def ten_ms() -> int:
    """The guarded operation of the throughput benchmark: one 10 ms wait."""
    await asyncio.sleep(0.01)
    return 1


async def time_calls(call: Call, calls: int) -> float:
    """Seconds to await ``call()`` ``calls`` times in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return time.perf_counter() - start


async def overhead(calls: int, rounds: int) -> dict[str, float]:
    """Best per-call time (seconds) of each variant over ``rounds`` alternating rounds."""
    ours = CircuitBreaker(name="bench", failure_threshold=5, reset_timeout=60)
    ours_rate = CircuitBreaker(name="bench-rate", failure_rate_threshold=0.5, window_size=100)
    theirs = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))
    variants: dict[str, Call] = {
        "bare": noop,
        "ours": lambda: ours.call(noop),
        "ours_rate_window": lambda: ours_rate.call(noop),
        "aiobreaker": lambda: theirs.call_async(noop),
    }
    best = dict.fromkeys(variants, float("inf"))
    for call in variants.values():  # warm up
        await time_calls(call, calls // 10)
    for _ in range(rounds):
        for name, call in variants.items():
            best[name] = min(best[name], await time_calls(call, calls) / calls)
    return best


async def throughput(rounds: int) -> tuple[float, float]:
    """Median wall time of 100 concurrent 10 ms calls, unguarded and guarded."""
    breaker = CircuitBreaker(name="bench-concurrent", failure_threshold=5, reset_timeout=60)

    async def batch(call: Call) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(call() for _ in range(100)))
        return time.perf_counter() - start

    def guarded() -> Awaitable[int]:
        return breaker.call(ten_ms)

    bare_times: list[float] = []
    guarded_times: list[float] = []
    await batch(ten_ms)
    await batch(guarded)
    for _ in range(rounds):
        bare_times.append(await batch(ten_ms))
        guarded_times.append(await batch(guarded))
    return statistics.median(bare_times), statistics.median(guarded_times)


def main() -> None:
    """Run both benchmarks and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per overhead round")
    parser.add_argument("--rounds", type=int, default=25, help="overhead rounds (best kept)")
    parser.add_argument("--batches", type=int, default=60, help="throughput batches per side")
    args = parser.parse_args()

    best = asyncio.run(overhead(args.calls, args.rounds))
    bare = best["bare"]
    print(f"closed-state cost per call ({args.calls} calls x {args.rounds} rounds, best round)")
    for name, seconds in best.items():
        extra = "" if name == "bare" else f"   overhead {(seconds - bare) * 1e6:6.2f} us"
        print(f"  {name:<17} {seconds * 1e6:6.2f} us/call{extra}")
    ours_overhead = best["ours"] - bare
    theirs_overhead = best["aiobreaker"] - bare
    print(f"overhead ratio ours/aiobreaker: {ours_overhead / theirs_overhead:.2f} (target <= 1.0)")
    print(f"per-call ratio ours/aiobreaker: {best['ours'] / best['aiobreaker']:.2f}")

    bare_wall, guarded_wall = asyncio.run(throughput(args.batches))
    print(f"100 concurrent 10 ms calls, median of {args.batches} batches")
    print(f"  unguarded {bare_wall * 1e3:7.2f} ms   guarded {guarded_wall * 1e3:7.2f} ms")
    print(f"throughput ratio guarded/unguarded wall time: {guarded_wall / bare_wall:.3f} (<= 1.05)")


if __name__ == "__main__":
    main()
