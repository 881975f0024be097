"""200 concurrent calls through one ModelManager: own answers, own exact usage, a free loop."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import dspy
import pytest
from _model_helpers import MakeManager, model

from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio

CALLS = 200
# A synchronous call to this provider would stall the loop for at least LATENCY_S, which is
# above MAX_LOOP_LAG_S; both sit well above the worst stall seen on a loaded 2-core machine
# with the calls really off the loop (~180 ms: descheduling, GIL hand-offs, DSPy formatting).
LATENCY_S = 0.3
MAX_LOOP_LAG_S = 0.25
PROBE_INTERVAL_S = 0.005


@asynccontextmanager
async def loop_lag_probe() -> AsyncIterator[list[float]]:
    """Sleep 5 ms at a time while the body runs; each overshoot is time the loop was busy."""
    lags: list[float] = []
    done = anyio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await anyio.sleep(PROBE_INTERVAL_S)
            lags.append(time.perf_counter() - started - PROBE_INTERVAL_S)

    # A full collection of everything imported so far (DSPy, LiteLLM) takes ~40 ms on its own;
    # freezing those objects keeps the measurement about the code under test. (No collect
    # first: it would report other tests' unclosed sockets as this test's failure.)
    gc.freeze()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(probe)
            try:
                yield lags
            finally:
                done.set()
    finally:
        gc.unfreeze()


async def test_the_probe_detects_a_blocked_loop() -> None:
    async with loop_lag_probe() as lags:
        await anyio.sleep(0.02)
        time.sleep(LATENCY_S)  # noqa: ASYNC251 -- on purpose: what a sync HTTP call would do
        await anyio.sleep(0.02)

    assert max(lags) > MAX_LOOP_LAG_S


def question(index: int) -> str:
    # Different lengths, so a mixed-up usage shows up as a wrong count.
    return f"question {index}:" + " word" * (index % 37)


async def test_200_concurrent_calls_get_their_own_answers_and_usage(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    manager = make_manager({"chat": model("openai", "auto"), "claude": model("anthropic", "auto")})
    program = dspy.Predict("question -> answer")
    backends = [manager.single_attempt_backend(program, model_id) for model_id in manager.model_ids]
    for backend in backends:  # first calls pay one-time lazy imports inside DSPy
        await backend.predict({"question": "warm up"})
    provider.latency_s = LATENCY_S
    outputs: dict[int, ModelOutput] = {}
    in_flight = peak = 0

    async def call(index: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        outputs[index] = await backends[index % 2].predict({"question": question(index)})
        in_flight -= 1

    started = time.perf_counter()
    async with loop_lag_probe() as lags, anyio.create_task_group() as calls:
        for index in range(CALLS):
            calls.start_soon(call, index)
            # Requests reach a server one network event at a time, not all in one loop tick
            # (200 starts in one tick would be ~200 ms of DSPy prompt formatting in a row).
            await anyio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - started

    assert len(outputs) == CALLS
    for index, output in outputs.items():
        assert output.content.answer == f"echo: {question(index)}"
        assert output.model_id == manager.model_ids[index % 2]
        assert output.usage is not None
        assert output.usage.method is TokenCountMethod.EXACT
    assert max(lags) < MAX_LOOP_LAG_S, f"event loop blocked for {max(lags) * 1000:.0f} ms"
    # Really concurrent: one after another, 200 x 300 ms would take 60 s.
    assert peak >= 20
    assert elapsed < CALLS * LATENCY_S / 4

    # Ground truth: the same questions one at a time, without latency. A request that was
    # given another request's usage would differ here.
    provider.latency_s = 0.0
    for index in range(0, CALLS, 7):
        alone = await backends[index % 2].predict({"question": question(index)})
        assert outputs[index].usage == alone.usage, index
