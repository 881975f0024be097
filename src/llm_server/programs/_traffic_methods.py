"""The program manager's traffic methods (mixed into ``ProgramManager``): the capture options
of the model configuration's ``capture:`` section, and datasets from captured traffic."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llm_server.traffic import TrafficDataset

__all__ = ["TrafficMethods"]


class TrafficMethods:
    """The program manager's traffic methods (mixed into ``ProgramManager``)."""

    traffic: Any

    def _configured_capture(self, program_id: str) -> Any:
        """``CaptureOptions`` from the model configuration's ``capture:`` entry of
        ``program_id``, or ``None`` when it has none."""
        config = getattr(getattr(self, "model_manager", None), "config", None)
        entry = (getattr(config, "capture", None) or {}).get(program_id)
        if entry is None:
            return None
        from llm_server.traffic import CaptureOptions  # imported only by capturing hosts

        return CaptureOptions(
            sample_rate=entry.sample_rate,
            retention_days=entry.retention_days,
            redact_fields=frozenset(entry.redact_fields),
        )

    def traffic_dataset(
        self,
        program_id: str,
        *,
        version: str | None = None,
        since: datetime | float | None = None,
        min_score: float | None = None,
        label: str | None = None,
        limit: int | None = None,
        kind: Literal["human", "judge"] | None = None,
    ) -> TrafficDataset:
        """``dspy.Example``s from ``program_id``'s captured, successful requests.

        The same as :func:`llm_server.traffic.traffic_dataset` on this manager's traffic;
        blocking I/O (call it from a script, a job or a worker thread).

        Args:
            program_id: The program.
            version: Only requests this version answered.
            since: Only requests served at or after this time (aware datetime or epoch
                seconds).
            min_score: Only requests whose mean feedback score is at least this.
            label: Only requests with at least one feedback record carrying this label.
            limit: At most this many, the most recent.
            kind: Count only ``"human"`` or only ``"judge"`` feedback (default: both).

        Raises:
            InputError: A bad argument, or no program captures its traffic here.
        """
        from llm_server.traffic import traffic_dataset  # imported only by capturing hosts

        return traffic_dataset(
            self,
            program_id,
            version=version,
            since=since,
            min_score=min_score,
            label=label,
            limit=limit,
            kind=kind,
        )
