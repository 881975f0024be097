"""The default trip policy, probes judged by rate, cheap refusals and their summary log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import pytest
from _reliability_helpers import RecordingListener, fail_500, record_failures, succeed

from llm_server.core.circuit_breaker import BreakerState, CircuitBreaker
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import CircuitOpenError, ProviderUnavailableError
from llm_server.core.model_config import BreakerConfig
from llm_server.core.reliability import ReliableModel, RetryPolicy, build_reliable_backend
from llm_server.testing import FakeClock, ScriptedBackend

pytestmark = pytest.mark.anyio


def model_breaker(listener: RecordingListener, clock: FakeClock | None = None) -> CircuitBreaker:
    """A model's breaker built exactly as the model manager builds it by default."""
    return CircuitBreaker.from_config(
        "m", FrameworkSettings(_env_file=None), listeners=[listener], clock=clock
    )


# --- the default policy ------------------------------------------------------------------------


def test_without_a_threshold_the_breaker_trips_on_the_failure_rate() -> None:
    breaker = CircuitBreaker()
    assert (breaker._failure_rate, breaker._minimum_calls) == (0.5, 20)
    settings = FrameworkSettings(_env_file=None)
    assert CircuitBreaker.from_config("m", settings)._failure_rate == 0.5
    assert CircuitBreaker.from_config("m", settings)._half_open_max_calls == 3


def test_a_threshold_keeps_the_consecutive_policy_of_the_reference_decorator() -> None:
    assert CircuitBreaker(failure_threshold=5, reset_timeout=60)._failure_rate is None
    consecutive = FrameworkSettings(_env_file=None, breaker_failure_threshold=5)
    assert CircuitBreaker.from_config("m", consecutive)._failure_rate is None
    yaml = BreakerConfig(failure_threshold=4)
    assert CircuitBreaker.from_config("m", FrameworkSettings(), yaml)._failure_rate is None


async def five_percent_faults_at_c200(breaker: CircuitBreaker) -> tuple[int, int]:
    """10,000 calls from 200 callers; 5 % fail, in bursts of 5 that settle together.

    That is how concurrent failures look from a breaker (a connection reset or a provider
    blip fails every call in flight at once), and what a consecutive count mistakes for an
    outage. Returns (answered, exhausted retries).
    """
    rng = random.Random(20261130)
    blip = 0  # calls still to fail in the current burst

    async def provider(_: object) -> str:
        nonlocal blip
        await asyncio.sleep(0)  # let the 200 callers interleave, as concurrent requests do
        if blip == 0 and rng.random() < 0.01:
            blip = 5
        if blip:
            blip -= 1
            raise ProviderUnavailableError("503", model_id="m")
        return "ok"

    backend = build_reliable_backend(
        ReliableModel(
            ScriptedBackend(default=provider, model_id="m"),
            breaker,
            RetryPolicy(max_attempts=3, initial_backoff_s=0.0),
        )
    )
    remaining = 10_000
    answered = exhausted = 0

    async def caller() -> None:
        nonlocal remaining, answered, exhausted
        while remaining > 0:
            remaining -= 1
            try:
                await backend.predict("q")
            except (ProviderUnavailableError, CircuitOpenError):
                exhausted += 1
            else:
                answered += 1

    await asyncio.gather(*(caller() for _ in range(200)))
    return answered, exhausted


async def test_five_percent_transient_faults_at_c200_never_open_the_default_breaker() -> None:
    listener = RecordingListener()
    breaker = model_breaker(listener)
    answered, exhausted = await five_percent_faults_at_c200(breaker)
    snapshot = breaker.snapshot()
    assert answered + exhausted == 10_000
    assert exhausted <= 10  # a burst that outlasts the retries; never a refusal
    assert listener.transitions == []
    assert snapshot.refused == 0
    assert snapshot.failures > 400  # the faults did happen


async def test_the_same_faults_open_a_consecutive_count_breaker() -> None:
    # Why the default is a rate: five failures settling together look like an outage.
    listener = RecordingListener()
    breaker = CircuitBreaker.from_config(
        "m", FrameworkSettings(_env_file=None, breaker_failure_threshold=5), listeners=[listener]
    )
    await five_percent_faults_at_c200(breaker)
    assert (BreakerState.CLOSED, BreakerState.OPEN) in listener.transitions


async def test_a_full_outage_at_c200_opens_the_default_breaker_within_a_second() -> None:
    listener = RecordingListener()
    breaker = model_breaker(listener)
    down = asyncio.Event()

    async def provider(_: object) -> str:
        await asyncio.sleep(0.002)
        if down.is_set():
            raise ProviderUnavailableError("503", model_id="m")
        return "ok"

    backend = build_reliable_backend(
        ReliableModel(ScriptedBackend(default=provider, model_id="m"), breaker, None)
    )
    stop = time.monotonic() + 5

    async def caller() -> None:
        while time.monotonic() < stop and breaker.state is not BreakerState.OPEN:
            with contextlib.suppress(ProviderUnavailableError, CircuitOpenError):
                await backend.predict("q")

    callers = [asyncio.create_task(caller()) for _ in range(200)]
    await asyncio.sleep(0.2)  # healthy traffic fills the window with successes
    outage = time.monotonic()
    down.set()
    await asyncio.gather(*callers)
    assert breaker.state is BreakerState.OPEN
    assert time.monotonic() - outage < 1.0


# --- half-open ---------------------------------------------------------------------------------


async def open_rate_breaker(clock: FakeClock, probes: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(
        name="m", failure_rate_threshold=0.5, window_size=4, minimum_calls=4,
        half_open_max_calls=probes, reset_timeout=10, clock=clock,
    )  # fmt: skip
    await record_failures(breaker, 4)
    assert breaker.state is BreakerState.OPEN
    clock.advance(10)
    return breaker


async def test_probes_are_judged_together_by_the_failure_rate(clock: FakeClock) -> None:
    breaker = await open_rate_breaker(clock)
    await record_failures(breaker, 1)  # 1 of 3 failed: below 50 %, no verdict yet
    assert breaker.state is BreakerState.HALF_OPEN
    await breaker.call(succeed)
    assert breaker.state is BreakerState.HALF_OPEN  # a third failure would make 2 of 3
    await breaker.call(succeed)
    assert breaker.state is BreakerState.CLOSED


async def test_the_verdict_comes_as_soon_as_it_is_certain(clock: FakeClock) -> None:
    breaker = await open_rate_breaker(clock)
    await breaker.call(succeed)
    await breaker.call(succeed)  # 2 of 3 succeeded: the third cannot reach 50 %
    assert breaker.state is BreakerState.CLOSED


async def test_probe_failures_reaching_the_rate_reopen_at_once(clock: FakeClock) -> None:
    breaker = await open_rate_breaker(clock)
    await record_failures(breaker, 2)  # 2 of 3 can no longer be below 50 %
    assert breaker.state is BreakerState.OPEN


async def test_a_probe_cut_by_a_deadline_gives_no_verdict_and_the_next_call_probes(
    clock: FakeClock,
) -> None:
    breaker = await open_rate_breaker(clock, probes=1)
    hang = asyncio.Event()

    async def hangs() -> str:
        await hang.wait()
        return "never"

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await breaker.call(hangs)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot().half_open_in_flight == 0
    await breaker.call(succeed)  # admitted at once as the next probe
    assert breaker.state is BreakerState.CLOSED


# --- refusing before the work ------------------------------------------------------------------


async def test_would_admit_follows_the_state_and_takes_no_permit(clock: FakeClock) -> None:
    breaker = await open_rate_breaker(clock, probes=1)
    clock.advance(-10)  # (the fake clock may go back) open again, for this test only
    breaker.force_open()
    assert not breaker.would_admit()
    breaker.reset()
    assert breaker.would_admit()
    await record_failures(breaker, 4)
    assert not breaker.would_admit()
    clock.advance(10)
    assert breaker.would_admit()  # half-open with a free probe permit
    assert breaker.would_admit()  # asking took none
    permit = breaker.admit()
    assert not breaker.would_admit()  # the one probe is out
    breaker.settle(permit, None)
    assert breaker.state is BreakerState.CLOSED


async def test_refuse_counts_like_a_refused_call(clock: FakeClock) -> None:
    listener = RecordingListener()
    breaker = CircuitBreaker(name="m", failure_threshold=1, clock=clock, listeners=[listener])
    await record_failures(breaker, 1)
    error = breaker.refuse()
    assert isinstance(error, CircuitOpenError)
    assert error.retry_after_s == pytest.approx(60)
    assert breaker.snapshot().refused == 1
    assert listener.calls[-1].value == "refused"


async def test_an_open_breaker_logs_a_summary_not_a_line_per_refusal(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_server")
    breaker = CircuitBreaker(name="m", failure_threshold=1, reset_timeout=60, clock=clock)
    await record_failures(breaker, 1)
    for _ in range(1_000):
        with pytest.raises(CircuitOpenError):
            await breaker.call(fail_500)
    refusal_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal_lines) == 1
    clock.advance(10)
    for _ in range(500):
        breaker.refuse()
    refusal_lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal_lines) == 2
    assert "refused 1000 call(s)" in refusal_lines[-1]  # 999 unlogged since t=0, + itself
    clock.advance(50)
    await breaker.call(succeed)  # the probe closes it; the close line tells the rest
    assert "-> closed (refused 499 call(s)" in caplog.records[-1].getMessage()


def test_a_decorated_function_exposes_its_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=60)

    @breaker
    async def call_provider(prompt: str) -> str:
        return prompt

    @CircuitBreaker(failure_threshold=2)
    def sync_call() -> str:
        return "ok"

    assert call_provider.breaker is breaker  # type: ignore[attr-defined]
    assert sync_call.breaker.name.endswith("sync_call")  # type: ignore[attr-defined]


async def test_the_snapshot_says_what_opened_the_breaker(clock: FakeClock) -> None:
    consecutive = CircuitBreaker(name="c", failure_threshold=3, clock=clock)
    await record_failures(consecutive, 3)
    assert consecutive.snapshot().opened_because == "3 consecutive failures"
    assert consecutive.snapshot().consecutive_failures == 0  # counts restart with the state
    rate = await open_rate_breaker(clock)  # 4 of 4 failed, then half-open
    assert rate.snapshot().opened_because == "4 of 4 calls failed (100%)"
    await record_failures(rate, 2)
    assert rate.snapshot().opened_because == "2 of 3 half-open probes failed"
    rate.force_open()
    assert rate.snapshot().opened_because == "forced open"
    rate.reset()
    assert rate.snapshot().opened_because is None
