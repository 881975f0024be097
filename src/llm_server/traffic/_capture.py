"""Capture served requests off the request path: sampling, the bounded queue, the writer (private).

The request path only samples and appends a reference to a bounded queue (a few microseconds);
a writer thread turns the items into redacted records and stores them in batches, enforces
retention, and hands sampled captures to the program's online evaluation. When the queue is
full the item is dropped and counted; the request never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from llm_server.core.errors import ConfigurationError
from llm_server.core.reliability._budgets import current_tenant
from llm_server.traffic._feedback_methods import DAY_S, FeedbackMethods
from llm_server.traffic._options import CaptureOptions, QueuedItem, build_capture, dropped_counter
from llm_server.traffic._records import (
    Execution,
    TrafficStore,
)

if TYPE_CHECKING:
    from llm_server.traffic._judge import _Evaluator

__all__ = ["TrafficRecorder"]

_log = logging.getLogger("llm_server.traffic")
_LINGER_TICK_S = 0.01
_GIL_SLICE = 16  # items converted between two GIL releases (~0.3 ms)


class TrafficRecorder(FeedbackMethods):
    """Captures the traffic of the programs that opted in, and keeps their feedback.

    One recorder serves a :class:`~llm_server.models.program_manager.ProgramManager`
    (``program_manager.traffic``); :func:`enable_capture` (or ``register_program(capture=...)``)
    creates it from the settings on first use.

    Args:
        store: Where records go (:class:`SqliteTrafficStore` or :class:`PostgresTrafficStore`).
        queue_size: Requests that may wait for the writer; beyond it captures are dropped and
            counted (:attr:`dropped`), never waited for.
        batch_size: Most records written in one transaction.
        flush_interval_s: Longest wait before a partial batch is written.
        retention_interval_s: How often the writer deletes records past their retention.
        clock: Seconds since the epoch (injectable for retention tests).
        rng: The sampling randomness (injectable).
    """

    def __init__(
        self,
        store: TrafficStore,
        *,
        queue_size: int = 10_000,
        batch_size: int = 200,
        flush_interval_s: float = 0.05,
        retention_interval_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ConfigurationError("queue_size and batch_size must be at least 1")
        self.store = store
        self._queue: queue.Queue[QueuedItem] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retention_interval_s = retention_interval_s
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._options: dict[str, CaptureOptions] = {}
        self._evaluators: dict[str, _Evaluator] = {}
        self._pending: dict[str, Execution] = {}
        self._dropped_full = 0  # counted on the event loop's thread
        self._dropped_writing = 0  # counted on the writer thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(2)
        self._dropped_counter = dropped_counter()

    def __repr__(self) -> str:
        return f"TrafficRecorder({self.store!r}, programs={sorted(self._options)})"

    # --- configuration ----------------------------------------------------------------------

    def enable(
        self, program_id: str, options: CaptureOptions, *, model_manager: Any = None
    ) -> None:
        """Capture ``program_id``'s traffic with ``options`` (replacing earlier ones).

        Args:
            program_id: A program id.
            options: The capture options.
            model_manager: The model manager whose models an online evaluation calls.
        """
        if not isinstance(options, CaptureOptions):
            raise ConfigurationError(
                f"capture options of {program_id!r} must be CaptureOptions, "
                f"got {type(options).__name__}"
            )
        if options.evaluation is not None:
            from llm_server.traffic._judge import _Evaluator

            self._evaluators[program_id] = _Evaluator(
                self, program_id, options.evaluation, model_manager
            )
        else:
            self._evaluators.pop(program_id, None)
        self._options[program_id] = options
        self._start()

    def options(self, program_id: str) -> CaptureOptions | None:
        """The program's capture options, or ``None`` when it does not capture."""
        return self._options.get(program_id)

    @property
    def dropped(self) -> int:
        """Captures dropped: the queue was full, a redaction hook raised, or the store failed."""
        return self._dropped_full + self._dropped_writing

    # --- the request path --------------------------------------------------------------------

    def served(
        self, program_id: str, inputs: Mapping[str, Any], envelope: Mapping[str, Any]
    ) -> None:
        """Note a successful request (called by the program routes; never blocks)."""
        options = self._options.get(program_id)
        if options is None:
            return
        metadata = envelope["metadata"]
        program = metadata.get("program") or {}
        model = metadata.get("model") or {}
        self._put(
            options,
            program_id,
            execution_id=str(metadata["execution_id"]),
            version=str(program.get("version", "")),
            inputs=inputs,
            outputs=envelope.get("data"),
            metadata=metadata,
            error_type=None,
            model_id=str(model.get("id", "")),
        )

    def failed(
        self,
        program_id: str,
        *,
        execution_id: str,
        version: str,
        model_id: str,
        inputs: Mapping[str, Any],
        error: BaseException,
        latency_ms: float | None = None,
    ) -> None:
        """Note a failed request (called by the program routes; never blocks)."""
        options = self._options.get(program_id)
        if options is None:
            return
        error_type = str(getattr(error, "error_type", "internal_error"))
        billed = getattr(error, "request_usage", None)  # what a failed request was billed
        tokens = billed if isinstance(billed, Mapping) else {}
        metadata = {"performance": {"timing": {"total_ms": latency_ms}, "tokens": tokens}}
        self._put(
            options,
            program_id,
            execution_id=execution_id,
            version=version,
            inputs=inputs,
            outputs=None,
            metadata=metadata,
            error_type=error_type,
            model_id=model_id,
        )

    def _put(
        self,
        options: CaptureOptions,
        program_id: str,
        *,
        execution_id: str,
        version: str,
        inputs: Mapping[str, Any],
        outputs: Any,
        metadata: Mapping[str, Any],
        error_type: str | None,
        model_id: str,
    ) -> None:
        execution = Execution(execution_id, program_id, version, current_tenant(), self._clock())
        sampled = options.sample_rate >= 1.0 or self._random() < options.sample_rate
        judge_loop = None
        evaluation = options.evaluation
        if (
            sampled
            and evaluation is not None
            and error_type is None
            and (evaluation.sample_rate >= 1.0 or self._random() < evaluation.sample_rate)
        ):
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to judge on
                judge_loop = asyncio.get_running_loop()
        item = QueuedItem(
            execution,
            inputs if sampled else None,
            outputs,
            metadata,
            error_type,
            model_id,
            judge_loop,
        )
        self._pending[execution_id] = execution  # before the writer can pop it
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._pending.pop(execution_id, None)
            self._dropped_full += 1
            self._dropped_counter.add(1, {"program_id": program_id})

    # --- retention and erasure ------------------------------------------------------------

    def enforce_retention(self) -> int:
        """Delete every record past its program's retention now; returns the rows deleted."""
        now = self._clock()
        return sum(
            self.store.delete_served_before(program_id, now - options.retention_days * DAY_S)
            for program_id, options in list(self._options.items())
        )

    def forget(self, tenant: str) -> int:
        """Delete every record of ``tenant`` (queued ones first written, then deleted).

        Returns:
            The rows deleted.
        """
        self.flush()
        return self.store.forget(tenant)

    # --- the writer --------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued capture is stored; ``False`` if ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline or self._thread is None:
                return not self._queue.unfinished_tasks
            time.sleep(0.005)
        return True

    async def aflush(self, timeout_s: float = 30.0) -> bool:
        """:meth:`flush` in a worker thread, then wait for queued online evaluations."""
        done = await anyio.to_thread.run_sync(self.flush, timeout_s, limiter=self._limiter)
        for evaluator in list(self._evaluators.values()):
            await evaluator.drain()
        return done

    def close(self) -> None:
        """Write what is queued, stop the writer and close the store."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        self.store.close()

    async def aclose(self) -> None:
        """Stop the online evaluations, then :meth:`close` in a worker thread."""
        for evaluator in list(self._evaluators.values()):
            await evaluator.aclose()
        await anyio.to_thread.run_sync(self.close, limiter=self._limiter)

    def _start(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llm-server-traffic", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        next_retention = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            batch = self._next_batch(stopping)
            if batch:
                self._write(batch)
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self._retention_interval_s
                try:
                    self.enforce_retention()
                except Exception:
                    _log.warning("traffic retention failed; will try again", exc_info=True)
            if stopping and not batch:
                return

    def _next_batch(self, stopping: bool) -> list[QueuedItem]:
        """The items of one transaction: after the first, wait up to ``flush_interval_s`` for
        more (sleeping, so a put does not wake the writer), up to ``batch_size``.

        A transaction per request cost ~100 us of CPU each in SQLite against ~20 us in batches
        of 200; without the wait the writer woke on every put and wrote batches of 1.4 on
        average at 700 requests/s (benchmarks/e2e/traffic_overhead.py).
        """
        try:
            batch = [self._queue.get(timeout=self._flush_interval_s)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._flush_interval_s
        while not stopping and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._queue.qsize() >= self._batch_size - 1:
                break
            time.sleep(min(left, _LINGER_TICK_S))
        with contextlib.suppress(queue.Empty):
            while len(batch) < self._batch_size:
                batch.append(self._queue.get_nowait())
        return batch

    def _write(self, batch: list[QueuedItem]) -> None:
        executions, captures, judged = [], [], []
        for index, item in enumerate(batch, 1):
            if index % _GIL_SLICE == 0:
                # Let the event loop have the GIL back: without it the loop waited for the
                # interpreter's switch interval (5 ms) while a batch was converted
                time.sleep(0)
            executions.append(item.execution)
            if item.inputs is None:
                continue
            try:
                capture = build_capture(item, self._options[item.execution.program_id])
            except Exception:
                self._dropped_writing += 1
                _log.warning(
                    "capture of %r dropped: its redaction failed",
                    item.execution.program_id,
                    exc_info=True,
                )
                continue
            captures.append(capture)
            if item.judge is not None:
                judged.append((item.judge, capture))
        try:
            self.store.write(executions, captures)
            for loop, capture in judged:  # before task_done: a flush then sees them queued
                evaluator = self._evaluators.get(capture.program_id)
                if evaluator is not None:
                    evaluator.submit(loop, capture)
        except Exception:
            self._dropped_writing += len(batch)
            _log.warning("traffic batch of %d dropped: the store failed", len(batch), exc_info=True)
        finally:
            for item in batch:
                self._pending.pop(item.execution.execution_id, None)
                self._queue.task_done()
