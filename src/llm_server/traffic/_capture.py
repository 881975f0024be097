"""Capture served requests off the request path: sampling, the bounded queue, the writer (private).

The request path only appends references to a bounded queue (a few microseconds) and schedules
a callback that samples the queued items and turns them into redacted records' fields on the
event loop, a slice at a time between other callbacks. A writer thread wakes once per flush
interval, stores the converted records in batches (SQLite inserts many rows per statement),
enforces retention, and hands sampled captures to the program's online evaluation.
When the queue is full the item is dropped and counted; the request never waits.

Why the conversion runs on the loop: the writer thread needs the interpreter lock for any
Python work, and each time it takes it while the loop runs it forces a switch (the loop waits up
to the switch interval, 5 ms); in-process, converting in the thread cost the writer ~150 us of
CPU per capture, most of it in those switches, against ~14 us for the writer and ~15 for the
loop now (``benchmarks/e2e/capture_cpu.py``, docs/how-to/traffic.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from llm_server.core.errors import ConfigurationError
from llm_server.core.reliability._budgets import current_tenant
from llm_server.traffic._feedback_methods import DAY_S, FeedbackMethods
from llm_server.traffic._options import CaptureOptions, build_capture, dropped_counter
from llm_server.traffic._records import (
    CapturedRequest,
    CaptureValues,
    Execution,
    ExecutionValues,
    TrafficStore,
)
from llm_server.traffic._sql import SqlTrafficStore

if TYPE_CHECKING:
    from llm_server.traffic._judge import _Evaluator

__all__ = ["TrafficRecorder"]

_log = logging.getLogger("llm_server.traffic")
_SLICE = 64  # items converted on the loop per callback (~10 us each without a hook) ...
_SLICE_S = 0.002  # ... or fewer once this long has passed (a slow redaction hook)
_CONVERT_AFTER_S = 0.1  # the loop converts what came in this long: one cold start per slice
_STALLED_S = 2 * _CONVERT_AFTER_S  # a head queued this long is left to the writer

_Failure = tuple[str, str, str, Mapping[str, Any]]
"""A failed request's version, model id, error type and metadata."""
_Raw = tuple[
    CaptureOptions,
    str,  # program id
    str,  # execution id
    str | None,  # tenant
    float,  # served at
    Mapping[str, Any],  # inputs
    Mapping[str, Any] | None,  # the envelope (served) ...
    _Failure | None,  # ... or the failure
    asyncio.AbstractEventLoop | None,  # the loop that served it
]
"""What the request path queues: references only."""

_Prepared = tuple[ExecutionValues, CaptureValues | None, asyncio.AbstractEventLoop | None]
"""An item converted for the writer: its execution's and its capture's fields (``None``: not
sampled, or its redaction failed; the records are built only for a store of another kind, or
a judge) and the loop to judge it on."""


def _execution(item: _Raw) -> ExecutionValues:
    """A queued item's execution (what feedback needs): ids, version, tenant, time."""
    _, program_id, execution_id, tenant, served_at, _, envelope, failure, _ = item
    if failure is not None:
        version = failure[0]
    else:
        version = _served_version((envelope or {}).get("metadata", {}))
    return execution_id, program_id, version, tenant, served_at


def _served_version(metadata: Mapping[str, Any]) -> str:
    """The program version an envelope's ``metadata`` names (``""`` when it names none)."""
    return str((metadata.get("program") or {}).get("version", ""))


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
        flush_interval_s: How often the writer wakes to write what is queued (a flush, a
            close or :meth:`forget` wakes it at once). The larger a batch, the less CPU a row
            costs (its indexes, the commit, caches warmed once per batch): in-process, with the
            loop 75 % busy, the writer took ~19 us per capture waking every 0.2 s and ~13 every
            1 s at 375 requests a second (``benchmarks/e2e/capture_cpu.py``).
        retention_interval_s: How often the writer deletes records past their retention.
        clock: Seconds since the epoch (injectable for retention tests).
        rng: The sampling randomness (injectable).
    """

    def __init__(
        self,
        store: TrafficStore,
        *,
        queue_size: int = 10_000,
        batch_size: int = 1000,
        flush_interval_s: float = 1.0,
        retention_interval_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ConfigurationError("queue_size and batch_size must be at least 1")
        self.store = store
        self._queue_size = queue_size
        self._raw: deque[_Raw] = deque()  # appended on the request path
        # converted, for the writer; None: an item dropped there (counted), done in its turn
        self._ready: deque[_Prepared | None] = deque()
        self._convert_lock = threading.Lock()  # one converter at a time: the order is kept
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._head_seen: _Raw | None = None  # the oldest queued item at the writer's last wake
        self._head_seen_at = 0.0  # when the writer first saw it there (monotonic)
        self._convert_asked = False  # a flush asks the writer to convert what is queued
        self._accepted = 0  # items queued (on the request path)
        self._written = 0  # items the writer is done with (on the writer thread)
        self._unconvertible = 0  # items whose conversion raised (under the conversion lock)
        self._wake = threading.Event()
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retention_interval_s = retention_interval_s
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._options: dict[str, CaptureOptions] = {}
        self._evaluators: dict[str, _Evaluator] = {}
        self._pending: dict[str, _Raw] = {}
        self._dropped_full = 0  # counted on the request path
        self._dropped_redacting = 0  # counted under the conversion lock
        self._dropped_writing = 0  # counted on the writer thread
        self._dropped_closed = 0  # served after close, or left queued when the writer stopped
        self._closed = False  # close() is done: nothing queued from now on is written
        self._stopping = False  # close() has begun: the writer's last round (_wake wakes it)
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
        replaced = self._evaluators.pop(program_id, None)
        if replaced is not None:
            replaced.stop()  # its worker would go on judging with the old options
        if options.evaluation is not None:
            from llm_server.traffic._judge import _Evaluator

            self._evaluators[program_id] = _Evaluator(
                self, program_id, options.evaluation, model_manager
            )
        self._options[program_id] = options
        self._start()

    def options(self, program_id: str) -> CaptureOptions | None:
        """The program's capture options, or ``None`` when it does not capture."""
        return self._options.get(program_id)

    def evaluation_counts(self, program_id: str) -> dict[str, int]:
        """The program's online evaluation in this process: captures ``scored``, ``skipped``
        (queue full, judge failed, or the loop stayed busy) and of those ``skipped_busy``."""
        evaluator = self._evaluators.get(program_id)
        if evaluator is None:
            return {"scored": 0, "skipped": 0, "skipped_busy": 0}
        return {
            "scored": evaluator.scored,
            "skipped": evaluator.skipped,
            "skipped_busy": evaluator.skipped_busy,
        }

    @property
    def dropped(self) -> int:
        """Captures dropped: the queue was full, a redaction hook raised or the envelope could
        not be read, the store refused the record, or the request was served after
        :meth:`close`."""
        return (
            self._dropped_full
            + self._dropped_redacting
            + self._unconvertible
            + self._dropped_writing
            + self._dropped_closed
        )

    # --- the request path --------------------------------------------------------------------

    def served(
        self, program_id: str, inputs: Mapping[str, Any], envelope: Mapping[str, Any]
    ) -> None:
        """Note a successful request (called by the program routes; never blocks)."""
        options = self._options.get(program_id)
        if options is not None:
            execution_id = str(envelope["metadata"]["execution_id"])
            self._put(options, program_id, execution_id, inputs, envelope=envelope)

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
        failure = (version, model_id, error_type, metadata)
        self._put(options, program_id, execution_id, inputs, failure=failure)

    def _put(
        self,
        options: CaptureOptions,
        program_id: str,
        execution_id: str,
        inputs: Mapping[str, Any],
        *,
        envelope: Mapping[str, Any] | None = None,
        failure: _Failure | None = None,
    ) -> None:
        """Queue references (no copy, no conversion); schedule the loop's conversion."""
        if self._stopping:  # closed: no writer will take it
            self._dropped_closed += 1
            self._dropped_counter.add(1, {"program_id": program_id})
            return
        if self._accepted - self._written >= self._queue_size:
            self._dropped_full += 1
            self._dropped_counter.add(1, {"program_id": program_id})
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: the writer converts it
            loop = None
        item = (
            options,
            program_id,
            execution_id,
            current_tenant(),
            self._clock(),
            inputs,
            envelope,
            failure,
            loop,
        )
        if loop is not None and self._scheduled_on is not loop:
            # before the append: a writer that sees the item sees its conversion scheduled
            self._scheduled_on = loop
            loop.call_later(_CONVERT_AFTER_S, self._convert_slice, loop)
        self._pending[execution_id] = item  # before the writer can pop it
        self._accepted += 1
        self._raw.append(item)
        if self._closed:  # close() finished between the check above and the append
            self._drop_left("served while the recorder closed")

    def _queued_execution(self, execution_id: str) -> Execution | None:
        """The execution of a capture not yet written, if it is queued."""
        item = self._pending.get(execution_id)
        if item is None:
            return None
        try:
            return Execution(*_execution(item))
        except Exception:  # a malformed envelope: its capture is dropped at its conversion
            return None

    # --- the conversion, on the loop ------------------------------------------------------

    def _convert_slice(self, loop: asyncio.AbstractEventLoop) -> None:
        """Convert a few queued items; again at the next loop iteration while any are left."""
        self._scheduled_on = None
        if self._convert_slice_now(_SLICE) is None:
            return  # the writer is converting: it takes the rest
        if self._raw and self._scheduled_on is None:
            self._scheduled_on = loop
            loop.call_soon(self._convert_slice, loop)

    def _convert_slice_now(self, limit: int) -> int | None:
        """Convert a slice on the loop (up to ``limit`` items or ``_SLICE_S``); how many it
        took, or ``None`` when the writer holds the conversion lock."""
        if not self._convert_lock.acquire(blocking=False):
            return None
        try:
            return self._convert(limit, _SLICE_S)
        finally:
            self._convert_lock.release()

    def _convert(self, limit: int, budget_s: float | None = None) -> int:
        """Convert up to ``limit`` queued items, oldest first, stopping after the one that
        ends ``budget_s`` (hold ``_convert_lock``); returns how many it took."""
        ends = None if budget_s is None else time.perf_counter() + budget_s
        for taken in range(limit):
            try:
                item = self._raw.popleft()
            except IndexError:
                return taken
            prepared: _Prepared | None
            try:
                prepared = self._prepare(item)
            except Exception:  # an envelope the route did not build (served() is public)
                prepared = None  # the writer counts it done in its turn, so flush keeps order
                self._pending.pop(item[2], None)
                self._unconvertible += 1
                self._dropped_counter.add(1, {"program_id": item[1]})
                _log.warning(
                    "capture of %r dropped: its envelope is malformed", item[1], exc_info=True
                )
            self._ready.append(prepared)
            if ends is not None and time.perf_counter() > ends:
                return taken + 1
        return limit

    def _prepare(self, item: _Raw) -> _Prepared:
        """An item's execution, its capture if sampled, and the loop to judge it on."""
        options, program_id, execution_id, tenant, served_at, inputs, envelope, failure, loop = item
        if failure is not None:
            version, model_id, error_type, metadata = failure
            outputs = None
        else:
            assert envelope is not None
            metadata = envelope["metadata"]
            outputs, error_type = envelope.get("data"), None
            model_id = str((metadata.get("model") or {}).get("id", ""))
            version = _served_version(metadata)
        execution = (execution_id, program_id, version, tenant, served_at)
        if not (options.sample_rate >= 1.0 or self._random() < options.sample_rate):
            return execution, None, None
        evaluation = options.evaluation
        judged = (
            loop is not None  # no running loop: nothing to judge on
            and evaluation is not None
            and error_type is None
            and (evaluation.sample_rate >= 1.0 or self._random() < evaluation.sample_rate)
        )
        try:
            capture = build_capture(
                execution,
                options,
                inputs=inputs,
                outputs=outputs,
                metadata=metadata,
                error_type=error_type,
                model_id=model_id,
            )
        except Exception:
            self._dropped_redacting += 1
            self._dropped_counter.add(1, {"program_id": program_id})
            _log.warning("capture of %r dropped: its redaction failed", program_id, exc_info=True)
            return execution, None, None
        return execution, capture, loop if judged else None

    # --- retention and erasure ------------------------------------------------------------

    def enforce_retention(self) -> int:
        """Delete every record past its program's retention now; returns the rows deleted."""
        now = self._clock()
        return sum(
            self.store.delete_served_before(program_id, now - options.retention_days * DAY_S)
            for program_id, options in list(self._options.items())
        )

    def forget(self, tenant: str, *, timeout_s: float = 30.0) -> int:
        """Delete every record of ``tenant`` (queued ones first written, then deleted).

        Blocking I/O: from async code, call it with ``anyio.to_thread.run_sync``.

        Returns:
            The rows deleted.

        Raises:
            TimeoutError: Captures were still queued after ``timeout_s``; what was stored is
                deleted, and a record written later may be the tenant's: call it again.
            RuntimeError: The recorder is closed.
        """
        if self._stopping:
            raise RuntimeError("the traffic recorder is closed: it can forget nothing")
        written = self.flush(timeout_s)
        deleted = self.store.forget(tenant)
        if not written:
            raise TimeoutError(
                f"forget deleted {deleted} records, but captures were still queued after "
                f"{timeout_s:g} s; call it again once they are written"
            )
        return deleted

    # --- the writer --------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued capture is stored; ``False`` if ``timeout_s`` passed."""
        target = self._accepted
        deadline = time.monotonic() + timeout_s
        self._convert_asked = True  # the loop may be the caller, blocked here
        self._wake.set()
        while self._written < target:
            thread = self._thread
            if time.monotonic() > deadline or thread is None or not thread.is_alive():
                return self._written >= target
            time.sleep(0.005)
        return True

    async def aflush(self, timeout_s: float = 30.0) -> bool:
        """Convert what is queued now on the loop (a slice at a time, other callbacks in
        between), :meth:`flush` in a worker thread, then wait for queued online evaluations,
        all within ``timeout_s`` (the wait for a worker thread included); ``False`` if it
        passed first."""
        deadline = time.monotonic() + timeout_s
        # here, not on the writer thread, where it costs twice the CPU: what is queued now, a
        # slice at a time, other callbacks in between, until the deadline (the writer takes
        # what is left; what requests queue meanwhile is not this flush's)
        todo = len(self._raw)
        while todo > 0 and time.monotonic() < deadline:
            taken = self._convert_slice_now(min(_SLICE, todo))
            if not taken:
                break  # the writer is converting, or the loop's own slices took them
            todo -= taken
            await anyio.lowlevel.checkpoint()
        done = False
        with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):  # a thread's turn too
            left = max(deadline - time.monotonic(), 0.0)
            done = await anyio.to_thread.run_sync(self.flush, left, limiter=self._limiter)
        with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)) as waiting:
            for evaluator in list(self._evaluators.values()):
                await evaluator.drain()
        return done and not waiting.cancelled_caught

    def close(self) -> None:
        """Write what is queued, stop the writer and close the store."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        if thread is None or not thread.is_alive():
            # what a request served while the writer stopped queued (after its last look)
            self._drop_left("served while the recorder closed")
            self._closed = True
        self.store.close()

    def _drop_left(self, why: str) -> None:
        """Drop (counted) what is queued once no writer will take it."""
        with self._convert_lock:
            left = len(self._raw) + sum(1 for item in self._ready if item is not None)
            self._raw.clear()
            self._ready.clear()
            self._pending.clear()
        if left:
            self._dropped_closed += left
            self._dropped_counter.add(left)
            _log.warning("%d captures dropped: %s", left, why)

    async def aclose(self) -> None:
        """Stop the online evaluations (captures handed to them from now on are skipped,
        counted), then :meth:`close` in a worker thread."""
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
            stopping = self._stopping
            if not stopping:
                # One wake per interval (or on flush/close): each time this thread takes the
                # interpreter lock while the loop runs, the loop is made to switch
                self._wake.wait(self._flush_interval_s)
                self._wake.clear()
            convert_asked, self._convert_asked = self._convert_asked, False
            if self._raw and (stopping or convert_asked or self._left_to_writer()):
                with self._convert_lock:
                    self._convert(len(self._raw))
            wrote = False
            while self._ready:
                batch: list[_Prepared | None] = []
                with contextlib.suppress(IndexError):
                    while len(batch) < self._batch_size:
                        batch.append(self._ready.popleft())
                self._write(batch)
                wrote = True
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self._retention_interval_s
                try:
                    self.enforce_retention()
                except Exception:
                    _log.warning("traffic retention failed; will try again", exc_info=True)
            if stopping and not wrote:
                with self._convert_lock:  # not while the loop converts the last item
                    if not self._raw and not self._ready:
                        return

    def _left_to_writer(self) -> bool:
        """Whether the queued items wait for the writer: no loop has a conversion scheduled
        (none was running), or the oldest one has stayed at the head twice as long as the
        loop waits before converting (the loop is blocked or gone; seen at a wake, so after
        one or two flush intervals). Items the loop is about to convert are left to it:
        converted here, where every Python step contends with the loop for the interpreter
        lock, they cost ~20 us each instead of ~10 (capture_cpu.py: 5 % of the items, 1 us per
        capture)."""
        try:
            head: _Raw | None = self._raw[0]
        except IndexError:  # the loop took the last one meanwhile
            head = None
        now = time.monotonic()
        if head is not self._head_seen:
            self._head_seen, self._head_seen_at = head, now
        stalled = head is not None and now - self._head_seen_at >= _STALLED_S
        return self._scheduled_on is None or stalled

    def _write(self, items: list[_Prepared | None]) -> None:
        """Store one batch in one transaction, then hand its sampled captures to the judges
        (``None``: an item dropped at its conversion, only counted done)."""
        batch = [item for item in items if item is not None]
        executions = [execution for execution, _, _ in batch]
        judged: dict[asyncio.AbstractEventLoop, list[CaptureValues]] = {}
        for _, capture, loop in batch:
            if capture is not None and loop is not None:
                judged.setdefault(loop, []).append(capture)
        try:
            try:
                if batch:
                    self._store(executions, [c for _, c, _ in batch if c is not None])
            except Exception as exc:
                if not _record_error(exc):
                    raise  # the store failed (locked, down): the batch is dropped, counted
                judged = self._write_each(batch)  # one bad record must not take its batch
            for loop, sampled in judged.items():  # before counting written: a flush then
                # sees them queued for their judge (records: what a judge is handed)
                self._submit(loop, [CapturedRequest(*values) for values in sampled])
        except Exception:
            self._drop_written(executions)
            _log.warning("traffic batch of %d dropped: the store failed", len(batch), exc_info=True)
        finally:
            for execution in executions:
                self._pending.pop(execution[0], None)
            self._written += len(items)

    def _store(self, executions: list[ExecutionValues], captures: list[CaptureValues]) -> None:
        """Hand a SQL store the records' fields; build the records for a store of another
        kind, or one whose ``write`` is its own."""
        store = self.store
        if (
            isinstance(store, SqlTrafficStore)
            and getattr(type(store), "write", None) is SqlTrafficStore.write
            and "write" not in getattr(store, "__dict__", ())
        ):
            store.write_values(executions, captures)
        else:
            store.write(
                [Execution(*values) for values in executions],
                [CapturedRequest(*values) for values in captures],
            )

    def _write_each(
        self, batch: list[_Prepared]
    ) -> dict[asyncio.AbstractEventLoop, list[CaptureValues]]:
        """Store a batch the store refused record by record, dropping (counted) only those it
        refuses alone; the sampled captures stored, by loop."""
        judged: dict[asyncio.AbstractEventLoop, list[CaptureValues]] = {}
        failed: list[_Prepared] = []
        error: Exception | None = None
        for item in batch:
            execution, capture, loop = item
            try:
                self._store([execution], [] if capture is None else [capture])
            except Exception as exc:
                failed.append(item)
                error = exc
                continue
            if capture is not None and loop is not None:
                judged.setdefault(loop, []).append(capture)
        if failed:
            self._drop_written([execution for execution, _, _ in failed])
            _log.warning(
                "%d of a traffic batch of %d dropped: the store refused them",
                len(failed),
                len(batch),
                exc_info=error,
            )
        return judged

    def _drop_written(self, executions: list[ExecutionValues]) -> None:
        """Count records the store refused as dropped (on the writer thread)."""
        self._dropped_writing += len(executions)
        for execution in executions:
            self._dropped_counter.add(1, {"program_id": execution[1]})

    def _submit(self, loop: asyncio.AbstractEventLoop, captures: list[CapturedRequest]) -> None:
        """Hand a batch's sampled captures to their judges, on the loop that served them."""
        evaluators = self._evaluators

        def enqueue() -> None:
            for capture in captures:
                evaluator = evaluators.get(capture.program_id)
                if evaluator is not None:
                    evaluator.enqueue(capture)

        try:
            loop.call_soon_threadsafe(enqueue)  # one wake of the loop per batch
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            for capture in captures:
                evaluator = evaluators.get(capture.program_id)
                if evaluator is not None:
                    evaluator.skipped += 1


def _record_error(error: Exception) -> bool:
    """Whether a failed write was about a record's data (text no encoder takes, a value out of
    range, a constraint), which the batch's other records are not to pay for, rather than about
    the store (locked, down, full), which each record would wait out again."""
    if isinstance(error, UnicodeError | ValueError | TypeError | OverflowError):
        return True
    return any(kind.__name__ in {"DataError", "IntegrityError"} for kind in type(error).__mro__)
