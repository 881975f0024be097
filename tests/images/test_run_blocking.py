"""run_blocking and the image work it carries: off the loop, bounded, context kept."""

from __future__ import annotations

import contextvars
import functools
import gc
import threading
import time
from collections.abc import Callable

import anyio
import pytest
from _image_factory import detailed, encode

from llm_server.core.errors import ConfigurationError
from llm_server.core.implementations import ImageProcessor
from llm_server.core.media import _blocking as blocking
from llm_server.core.media import configure_blocking, run_blocking
from llm_server.core.media._blocking import blocking_limiter
from llm_server.core.types import MediaType, PipelineData

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_returns_the_result_in_a_worker_thread() -> None:
    total, thread = await run_blocking(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert total == 5
    assert thread != threading.get_ident()


async def test_exceptions_propagate_unchanged() -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await run_blocking(fail)


async def test_contextvars_reach_the_worker_thread() -> None:
    request_id.set("req-42")
    assert await run_blocking(request_id.get) == "req-42"


async def test_default_limiter_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocking, "_workers", None)
    monkeypatch.setenv("LLM_SERVER_BLOCKING_WORKERS", "3")
    limiter = blocking_limiter()
    assert limiter.total_tokens == 3
    assert blocking_limiter() is limiter  # one per event loop


async def test_configure_blocking_sets_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocking, "_workers", None)
    configure_blocking(workers=7)
    assert blocking_limiter().total_tokens == 7
    with pytest.raises(ConfigurationError):
        configure_blocking(workers=0)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()`` holds (state inside anyio's limiter has no event to await)."""
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - nothing to await but the limiter's counters
            await anyio.sleep(0.001)


async def _max_concurrency(jobs: int, limiter: anyio.CapacityLimiter) -> int:
    """Start ``jobs`` blocking jobs; release them only once the limiter holds the rest back."""
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    async with anyio.create_task_group() as group:
        for _ in range(jobs):
            group.start_soon(functools.partial(run_blocking, job, limiter=limiter))
        await wait_until(lambda: limiter.statistics().tasks_waiting == jobs - 2)
        await wait_until(lambda: running == 2)
        release.set()
    return peak


async def test_the_limiter_bounds_concurrency() -> None:
    assert await _max_concurrency(6, anyio.CapacityLimiter(2)) == 2


async def test_image_processor_uses_its_limiter() -> None:
    limiter = anyio.CapacityLimiter(1)
    processor = ImageProcessor(limiter=limiter)
    data = PipelineData(MediaType.IMAGE, encode(detailed((64, 48)), "PNG"))
    await limiter.acquire()  # hold the only token: processing must wait for it
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(processor.process, data)
            await wait_until(lambda: limiter.statistics().tasks_waiting == 1)
            limiter.release()
    finally:
        assert limiter.borrowed_tokens == 0


async def test_a_large_decode_does_not_block_the_event_loop() -> None:
    source = encode(detailed((3000, 2000)), "JPEG", quality=95)
    processor = ImageProcessor((800, 800), reducing_gap=None)
    lags: list[float] = []
    done = anyio.Event()

    async def probe() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await anyio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    gc.freeze()  # a full collection of the test session's heap is a stall of its own
    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(probe)
            await processor.process(PipelineData(MediaType.IMAGE, source))
            elapsed = time.perf_counter() - started
            done.set()
    finally:
        gc.unfreeze()
    # On the loop, the whole decode would be one stall (one lag of about `elapsed`, or no tick
    # at all); off it, ticks keep coming. Half of `elapsed` leaves room for a loaded machine's
    # scheduling stalls (up to ~70 ms seen with the decode taking ~250-650 ms).
    assert len(lags) >= 5
    assert max(lags) < max(0.1, elapsed / 2), (max(lags), elapsed)
