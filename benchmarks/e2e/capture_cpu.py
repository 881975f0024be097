"""The CPU one capture costs, in-process: on the event loop (sampling and enqueueing on the
request path, then the redaction and conversion the loop does between callbacks) and on the
writer thread (the batched SQLite insert), while the loop is kept busy like a server's.

A loop serves simulated requests at a fixed rate, each ``BUSY_MS`` of Python CPU (the loop is
then busy about three quarters of the time, so the writer thread contends for the interpreter
lock as it would in a loaded server) followed by ``TrafficRecorder.served`` with a real
envelope, built just before (untimed), as a route builds it. The loop's share is timed around
``served`` and the conversion callbacks (``time.thread_time``); the writer's is its thread's
CPU clock (``pthread_getcpuclockid``: nanoseconds; psutil's thread times count 10 ms ticks,
2.5 us per capture at 4,000). Execution ids are version-7 UUIDs, as the server makes them.

``measure_judge``: what an online evaluation of 10 % of the captures adds on the same busy
loop, the case the end-to-end saturated p99 cannot resolve to 2 % on this machine (one run
tells a ~10 % difference there). The evaluation's loop work is timed where it runs: the
hand-off of each written batch's sampled captures to its queue (``enqueue``) and every step of
its worker task (the pacing that waits for an idle loop: a 20 ms timer and two clock reads per
window), against the load's requests. A loop this busy never starts a judgement
(``scored_during_load`` says so), so the metric it would run does not matter; after the load
the queue is scored (``scored``). Not timed: one random draw per capture in ``served`` (the
sample, ~0.1 us) and the asyncio timer bookkeeping outside the task's steps.
Each figure is the median of three loads (``runs_...`` lists all three), as a burst elsewhere
on the shared machine can double one load's figures.
Used by ``traffic_overhead.py``; alone: ``python benchmarks/e2e/capture_cpu.py``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from llm_server.core.metadata import new_execution_id
from llm_server.traffic import (
    CaptureOptions,
    OnlineEvaluation,
    SqliteTrafficStore,
    TrafficRecorder,
)

BUSY_MS = 2.0
RATE = 375.0  # requests per second: BUSY_MS x RATE = 75 % of the loop


def _envelope(n: int) -> dict[str, Any]:
    """What the program route hands to capture (the shape app T serves)."""
    return {
        "success": True,
        "data": {"output": f"Question {n}: what is {n} plus {n}? The answer is {2 * n}."},
        "metadata": {
            "execution_id": new_execution_id(),
            "program": {"id": "captured", "name": "Captured", "version": "1.0.0"},
            "model": {"id": "gpt-4o-mini", "provider": "openai"},
            "performance": {
                "timing": {"total_ms": 2.1, "pipeline_complete_ms": 2.0},
                "tokens": {"input": 42, "output": 17, "total": 59, "cost_usd": 0.0000165},
            },
        },
    }


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _timed(spent: list[float], call: Callable[..., None]) -> Callable[..., None]:
    def timed(*args: Any) -> None:
        started = time.thread_time()
        try:
            call(*args)
        finally:
            spent[0] += time.thread_time() - started

    return timed


class _TimedSteps:
    """Awaits a coroutine, adding the CPU of each of its steps to ``spent[0]``."""

    def __init__(self, coro: Coroutine[Any, Any, Any], spent: list[float]) -> None:
        self._coro, self._spent = coro, spent

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._coro.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.thread_time()
            try:
                out = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                self._spent[0] += time.thread_time() - started
            try:
                value, error = (yield out), None
            except BaseException as exc:  # a cancellation, passed on to the coroutine
                value, error = None, exc


def _score(inputs: Any, outputs: Any) -> float:
    return 1.0


async def _run(captures: int, *, judged: bool = False) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="llm-server-capture-cpu-")
    recorder = TrafficRecorder(SqliteTrafficStore(f"{folder}/t.sqlite3"))
    # a busy loop starts no judgement, so the spacing between two only paces the scoring
    # after the load (0.05 s by default: 20 s for 400 captures)
    evaluation = (
        OnlineEvaluation(metric=_score, sample_rate=0.1, spacing_s=0.005) if judged else None
    )
    recorder.enable("captured", CaptureOptions(sample_rate=1.0, evaluation=evaluation))
    judge = [0.0]
    if judged:  # time the evaluation's loop work where it runs
        evaluator = recorder._evaluators["captured"]
        work = evaluator._work
        evaluator.enqueue = _timed(judge, evaluator.enqueue)  # type: ignore[method-assign]

        async def timed_work(*args: Any) -> None:
            await _TimedSteps(work(*args), judge)

        evaluator._work = timed_work  # type: ignore[method-assign]
    on_loop = [0.0]
    served = _timed(on_loop, recorder.served)
    recorder._convert_slice = _timed(on_loop, recorder._convert_slice)  # type: ignore[method-assign]
    writer = next(t for t in threading.enumerate() if t.name == "llm-server-traffic")
    assert writer.ident is not None
    writer_clock = time.pthread_getcpuclockid(writer.ident)
    start = time.perf_counter()
    for n in range(captures):
        _spin(BUSY_MS / 1000)
        # built just before, as a route builds its envelope (a body built long before is cold
        # in the caches: ~5 us more per capture on the loop)
        inputs = {"input": f"Question {n}: what is {n} plus {n}?"}
        envelope = _envelope(n)
        served("captured", inputs, envelope)
        delay = start + (n + 1) / RATE - time.perf_counter()
        await asyncio.sleep(max(delay, 0))
    # the load ends once its last capture is written and handed to the evaluation (a loop
    # blocked here is busy: no judgement starts)
    assert recorder.flush(60)
    await asyncio.sleep(0)
    judge_s = judge[0]
    writer_s = time.clock_gettime(writer_clock)  # the thread is alive until aclose
    scored_during_load = recorder.evaluation_counts("captured")["scored"] if judged else 0
    assert await recorder.aflush(60)
    scored = recorder.evaluation_counts("captured")["scored"] if judged else 0
    stored = len(recorder.store.captures("captured"))
    await recorder.aclose()
    if stored != captures or recorder.dropped:
        raise RuntimeError(f"stored {stored} of {captures}, dropped {recorder.dropped}")
    figures: dict[str, float] = {
        "captures": captures,
        "loop_us_per_capture": round(on_loop[0] / captures * 1e6, 1),
        "writer_us_per_capture": round(writer_s / captures * 1e6, 1),
        "total_us_per_capture": round((on_loop[0] + writer_s) / captures * 1e6, 1),
    }
    if judged:
        figures |= {
            "judge_loop_us_per_request": round(judge_s / captures * 1e6, 2),
            "scored_during_load": scored_during_load,
            "scored": scored,
        }
    return figures


def _median_run(runs: list[dict[str, float]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (its other figures stay consistent with it), with
    every run's ``key``: one load now and then shares the machine with a burst elsewhere."""
    ordered = sorted(runs, key=lambda run: run[key])
    return ordered[len(ordered) // 2] | {f"runs_{key}": [run[key] for run in runs]}


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Per-capture CPU on the loop and on the writer thread (µs): the median of three loads
    (one with ``quick``)."""
    runs = [asyncio.run(_run(1500 if quick else 4000)) for _ in range(1 if quick else 3)]
    return _median_run(runs, "total_us_per_capture")


def measure_judge(*, quick: bool = False) -> dict[str, Any]:
    """Per request, the loop CPU an online evaluation of 10 % of the captures adds while the
    loop is busy (µs), with capture at 100 %; and how many it scored during and after: the
    median of three loads (one with ``quick``)."""
    runs = [
        asyncio.run(_run(1500 if quick else 4000, judged=True)) for _ in range(1 if quick else 3)
    ]
    chosen = _median_run(runs, "judge_loop_us_per_request")
    chosen["scored_during_load"] = max(run["scored_during_load"] for run in runs)
    return chosen


if __name__ == "__main__":
    json.dump({"capture": measure(), "judge": measure_judge()}, __import__("sys").stdout, indent=1)
