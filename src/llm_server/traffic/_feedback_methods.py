"""The traffic recorder's feedback methods (mixed into ``TrafficRecorder``, private)."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import anyio.to_thread

from llm_server._unicode import valid_text
from llm_server.core.errors import ExecutionNotFoundError, InputError
from llm_server.core.telemetry._redaction import redact
from llm_server.traffic._options import CaptureOptions
from llm_server.traffic._records import (
    Execution,
    Feedback,
    FeedbackKind,
    TrafficStore,
    VersionFeedback,
)

__all__ = ["FeedbackMethods"]

DAY_S = 86400.0
_MAX_LABEL = 64
_MAX_COMMENT = 2000


class FeedbackMethods:
    """Feedback on served executions: find, store and sum up (mixed into ``TrafficRecorder``)."""

    store: TrafficStore
    _options: dict[str, CaptureOptions]
    _clock: Callable[[], float]
    _limiter: anyio.CapacityLimiter

    def _queued_execution(self, execution_id: str) -> Execution | None:
        raise NotImplementedError

    def find_execution(self, program_id: str, execution_id: str) -> Execution:
        """The served execution ``execution_id`` of ``program_id`` (blocking I/O).

        Raises:
            ExecutionNotFoundError: Unknown, of another program, or past retention.
        """
        found = self._queued_execution(execution_id) or self.store.find_execution(execution_id)
        options = self._options.get(program_id)
        if found is None or found.program_id != program_id:
            raise ExecutionNotFoundError(
                f"program {program_id!r} served no execution {execution_id!r} "
                "(unknown, or its records were deleted by retention)"
            )
        if options is not None and found.served_at < self._clock() - options.retention_days * DAY_S:
            raise ExecutionNotFoundError(
                f"execution {execution_id!r} of program {program_id!r} is past its "
                f"{options.retention_days:g}-day retention"
            )
        return found

    def add_feedback(
        self,
        program_id: str,
        execution_id: str,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        kind: FeedbackKind = "human",
    ) -> Feedback:
        """Store feedback on one served execution (blocking I/O: see :meth:`afeedback`).

        Args:
            program_id: The program that served it.
            execution_id: The envelope's ``execution_id``.
            score: A number (e.g. 0 to 1, or a rating).
            label: A short label (``"good"``, ``"wrong_language"``), at most 64 characters.
            comment: Free text, at most 2,000 characters.
            kind: ``"human"`` (a user's verdict) or ``"judge"`` (an online evaluation's).

        Returns:
            The stored record (with the version that answered).

        Raises:
            InputError: Neither a score nor a label, or a value out of bounds.
            ExecutionNotFoundError: The execution is unknown or past retention.
        """
        if score is None and not label:
            raise InputError("feedback needs a score, a label or both")
        if score is not None and (isinstance(score, bool) or not math.isfinite(float(score))):
            raise InputError(f"feedback score must be a finite number, got {score!r}")
        if label is not None and (len(label) > _MAX_LABEL or not label.isprintable()):
            raise InputError(f"feedback label must be printable, at most {_MAX_LABEL} characters")
        if comment is not None and len(comment) > _MAX_COMMENT:
            raise InputError(f"feedback comment must be at most {_MAX_COMMENT} characters")
        execution = self.find_execution(program_id, execution_id)
        feedback = Feedback(
            execution_id=execution_id,
            program_id=program_id,
            version=execution.version,
            kind=kind,
            score=None if score is None else float(score),
            label=label or None,
            comment=None if comment is None else redact(valid_text(comment)),
            tenant=execution.tenant,
            served_at=execution.served_at,
            given_at=self._clock(),
        )
        self.store.add_feedback(feedback)
        return feedback

    async def afeedback(
        self,
        program_id: str,
        execution_id: str,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        kind: FeedbackKind = "human",
    ) -> Feedback:
        """:meth:`add_feedback` in a worker thread (its own limiter, not the loop's pool)."""

        def add() -> Feedback:
            return self.add_feedback(
                program_id, execution_id, score=score, label=label, comment=comment, kind=kind
            )

        return await anyio.to_thread.run_sync(add, limiter=self._limiter)

    def feedback_summary(
        self, program_id: str, *, kind: FeedbackKind | None = None, since: float | None = None
    ) -> dict[str, VersionFeedback]:
        """Feedback figures per version of ``program_id`` (blocking I/O).

        Args:
            program_id: The program.
            kind: Count only ``"human"`` or only ``"judge"`` feedback (default: both).
            since: Only executions served at or after this time (epoch seconds), e.g. since
                a canary release started.
        """
        return self.store.feedback_summary(program_id, kind=kind, since=since)

    async def afeedback_summary(
        self, program_id: str, *, kind: FeedbackKind | None = None, since: float | None = None
    ) -> dict[str, VersionFeedback]:
        """:meth:`feedback_summary` in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: self.feedback_summary(program_id, kind=kind, since=since),
            limiter=self._limiter,
        )
