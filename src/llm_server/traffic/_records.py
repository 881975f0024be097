"""What the traffic store keeps: served executions, captured requests and feedback (private)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "CaptureValues",
    "CapturedRequest",
    "Execution",
    "ExecutionValues",
    "Feedback",
    "FeedbackKind",
    "TrafficStore",
    "VersionFeedback",
    "field_values",
]

FeedbackKind = Literal["human", "judge"]


@dataclass(frozen=True, slots=True)
class Execution:
    """One served request of a program with capture on, sampled or not (a few bytes).

    Kept for every request so that feedback on a request that was not captured still knows
    which version answered it, for the program's retention period. A store keeps it as a
    record of its own only when the request was not captured: a capture holds the same fields.
    """

    execution_id: str
    program_id: str
    version: str
    tenant: str | None
    served_at: float
    """Seconds since the epoch (UTC)."""


@dataclass(frozen=True, slots=True)
class CapturedRequest:
    """One sampled request, as stored (redacted).

    Attributes:
        execution_id: The envelope's ``execution_id``.
        program_id: The program.
        version: The program version that answered.
        canary: Whether that version was served as a canary.
        model_id: The model that answered (or was asked, when the call failed).
        inputs: The request's input fields, redacted.
        outputs: The response's output fields, redacted (``None`` when the call failed).
        input_tokens: Prompt tokens billed, when known.
        output_tokens: Completion tokens billed, when known.
        cost_usd: What the call cost, when the price is known.
        latency_ms: Time the program took.
        error_type: The error envelope's ``type`` when the call failed.
        tenant: The tenant the request was for.
        served_at: Seconds since the epoch (UTC).
    """

    execution_id: str
    program_id: str
    version: str
    canary: bool
    model_id: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any] | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    latency_ms: float | None
    error_type: str | None
    tenant: str | None
    served_at: float


ExecutionValues = tuple[str, str, str, str | None, float]
"""An :class:`Execution`'s fields, in their order (``Execution(*values)``)."""
CaptureValues = tuple[Any, ...]
"""A :class:`CapturedRequest`'s fields, in their order (``CapturedRequest(*values)``).

The recorder hands the SQL stores these instead of the records: a frozen dataclass sets each
field through ``object.__setattr__``, ~2 us for a capture's fourteen, on the event loop."""


def field_values(record: Execution | CapturedRequest) -> tuple[Any, ...]:
    """A record's fields, in their order (``type(record)(*values)`` builds it again)."""
    return tuple([getattr(record, name) for name in _FIELDS[type(record)]])


@dataclass(frozen=True, slots=True)
class Feedback:
    """A verdict on one served execution: a user's (``human``) or an online judge's."""

    execution_id: str
    program_id: str
    version: str
    kind: FeedbackKind
    score: float | None
    label: str | None
    comment: str | None
    tenant: str | None
    served_at: float
    given_at: float


@dataclass(frozen=True, slots=True)
class VersionFeedback:
    """Feedback figures of one program version.

    Attributes:
        count: Feedback records.
        scored: Records with a score.
        mean_score: Mean of the scores (``None`` when none has one).
        labels: How many records carry each label.
    """

    count: int
    scored: int
    mean_score: float | None
    labels: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "count": self.count,
            "scored": self.scored,
            "mean_score": self.mean_score,
            "labels": dict(self.labels),
        }


@runtime_checkable
class TrafficStore(Protocol):
    """Where captured traffic and feedback are kept (SQLite or PostgreSQL).

    Blocking methods: the recorder calls them from its writer thread or a worker thread.
    """

    def write(self, executions: Sequence[Execution], captures: Sequence[CapturedRequest]) -> None:
        """Store a batch (idempotent: an execution id already stored is kept as is)."""
        ...

    def add_feedback(self, feedback: Feedback) -> None:
        """Store one feedback record."""
        ...

    def find_execution(self, execution_id: str) -> Execution | None:
        """The stored execution, or ``None`` when unknown or deleted by retention."""
        ...

    def feedback_summary(
        self, program_id: str, *, kind: FeedbackKind | None = None, since: float | None = None
    ) -> dict[str, VersionFeedback]:
        """Feedback figures per version of the program (on executions served since ``since``)."""
        ...

    def captures(
        self, program_id: str, *, version: str | None = None, since: float | None = None
    ) -> list[CapturedRequest]:
        """Captured requests of the program, oldest first."""
        ...

    def feedback(
        self, program_id: str, *, version: str | None = None, since: float | None = None
    ) -> list[Feedback]:
        """Feedback records of the program, oldest first."""
        ...

    def delete_served_before(self, program_id: str, cutoff: float) -> int:
        """Delete what was served before ``cutoff`` (retention); returns the rows deleted."""
        ...

    def forget(self, tenant: str) -> int:
        """Delete every record of ``tenant``; returns the rows deleted."""
        ...

    def close(self) -> None:
        """Release the connection(s)."""
        ...


_FIELDS = {kind: tuple(f.name for f in fields(kind)) for kind in (Execution, CapturedRequest)}
