"""asyncio-specific breaker behaviour: limited probes, cancellation, timeouts, no held lock."""

from __future__ import annotations

import asyncio

import pytest
from _reliability_helpers import record_failures, succeed

from llm_server.core.circuit_breaker import BreakerState, CircuitBreaker
from llm_server.core.errors import CircuitOpenError
from llm_server.testing import FakeClock

pytestmark = pytest.mark.anyio


async def half_open_breaker(clock: FakeClock, probes: int = 1) -> CircuitBreaker:
    breaker = CircuitBreaker(
        name="m", failure_threshold=1, reset_timeout=30, half_open_max_calls=probes, clock=clock
    )
    await record_failures(breaker, 1)
    clock.advance(30)
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker


@pytest.mark.parametrize("probes", [1, 3])
async def test_fifty_concurrent_callers_let_exactly_n_probes_through(
    clock: FakeClock, probes: int
) -> None:
    breaker = await half_open_breaker(clock, probes)
    gate = asyncio.Event()
    started = 0

    async def probe() -> str:
        nonlocal started
        started += 1
        await gate.wait()
        return "ok"

    tasks = [asyncio.create_task(breaker.call(probe)) for _ in range(50)]
    await asyncio.sleep(0)
    # the refused callers are already done, without waiting for the probes
    refused = [t for t in tasks if t.done()]
    assert len(refused) == 50 - probes
    assert all(isinstance(t.exception(), CircuitOpenError) for t in refused)
    assert started == probes
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("ok") == probes
    assert breaker.state is BreakerState.CLOSED


async def test_a_cancelled_probe_gives_its_permit_back(clock: FakeClock) -> None:
    breaker = await half_open_breaker(clock)

    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):  # the only permit is taken
        await breaker.call(succeed)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot().half_open_in_flight == 0
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_a_probe_cut_off_by_an_outer_timeout_gives_its_permit_back(
    clock: FakeClock,
) -> None:
    breaker = await half_open_breaker(clock)

    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.001):
            await breaker.call(hang)
    assert breaker.snapshot().half_open_in_flight == 0
    assert await breaker.call(succeed) == "ok"


async def test_a_probe_that_times_out_inside_reopens_the_breaker(clock: FakeClock) -> None:
    breaker = await half_open_breaker(clock)

    async def times_out() -> None:
        async with asyncio.timeout(0.001):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await breaker.call(times_out)
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot().half_open_in_flight == 0


async def test_a_slow_call_does_not_block_a_concurrent_fast_one(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "slow"

    slow_task = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    # the fast call completes while the slow one is still inside the breaker
    assert await breaker.call(succeed) == "ok"
    assert not slow_task.done()
    gate.set()
    assert await slow_task == "slow"


async def test_a_slow_probe_does_not_block_refusals_or_other_probes(clock: FakeClock) -> None:
    breaker = await half_open_breaker(clock, probes=2)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "slow"

    slow_task = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    assert await breaker.call(succeed) == "ok"  # the second probe runs meanwhile
    gate.set()
    assert await slow_task == "slow"
    assert breaker.state is BreakerState.CLOSED


async def test_cancelling_inside_async_with_releases_the_permit(clock: FakeClock) -> None:
    breaker = await half_open_breaker(clock)
    entered = asyncio.Event()

    async def worker() -> None:
        async with breaker:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(worker())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.snapshot().half_open_in_flight == 0
    assert breaker.state is BreakerState.HALF_OPEN


async def test_an_open_breaker_with_many_waiters_refuses_each_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    await record_failures(breaker, 1)
    results = await asyncio.gather(
        *(breaker.call(succeed) for _ in range(100)), return_exceptions=True
    )
    assert all(isinstance(r, CircuitOpenError) for r in results)
    assert breaker.snapshot().refused == 100


async def test_admit_and_settle_count_like_call(clock: FakeClock) -> None:
    breaker = CircuitBreaker(name="m", failure_threshold=2, reset_timeout=30, clock=clock)
    ticket = breaker.admit()
    breaker.settle(ticket, None)
    for _ in range(2):
        breaker.settle(breaker.admit(), ConnectionError("down"))
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    clock.advance(30)
    probe = breaker.admit()  # half-open: the one probe is admitted, a second is refused
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    breaker.settle(probe, None)
    assert breaker.state is BreakerState.CLOSED
