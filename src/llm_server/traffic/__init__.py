"""Production traffic: capture, feedback, online evaluation and datasets to re-optimize from.

A program opts in at registration (``register_program(..., capture=CaptureOptions(...))``)
or later with :func:`enable_capture`. From then on::

    request ──> program route ──> envelope ──> response          (the request path)
                     │ served()/failed(): append references (bounded; full: dropped, counted)
                     v
               event loop, between callbacks: sample, redact, build records (64 at a time)
                     v
               writer thread, once per flush interval: write in batches, retention
                                                │                      │
                                                v                      v
                       SQLite file (one process) or PostgreSQL   online evaluation, paced
                       (LLM_SERVER_PROGRAM_STORE, a fleet)       (metric or DSPy judge, when
                                ^                                 the loop is idle, its own
                                |                                 budget tenant)
    POST /programs/{id}/feedback ┘ ──> feedback_summary(): per-version figures
                                       traffic_dataset(): dspy.Examples -> optimize_program

Every request of a capturing program leaves a small record (execution id, program,
version, tenant, time) so feedback on a request that was not sampled still names the version
that answered; a sampled request keeps its redacted inputs and outputs, model, tokens, cost,
latency, error type and whether it was served as a canary. Nothing waits on the store: the
request path only appends to a queue.
"""

from __future__ import annotations

from typing import Any

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError
from llm_server.traffic._capture import TrafficRecorder
from llm_server.traffic._dataset import TrafficDataset, traffic_dataset
from llm_server.traffic._feedback import FeedbackRequest, add_feedback_routes
from llm_server.traffic._judge import OnlineEvaluation
from llm_server.traffic._options import CaptureOptions
from llm_server.traffic._records import (
    CapturedRequest,
    Execution,
    Feedback,
    FeedbackKind,
    TrafficStore,
    VersionFeedback,
)
from llm_server.traffic._store_postgres import PostgresTrafficStore
from llm_server.traffic._store_sqlite import SqliteTrafficStore

__all__ = [
    "CaptureOptions",
    "CapturedRequest",
    "Execution",
    "Feedback",
    "FeedbackRequest",
    "OnlineEvaluation",
    "PostgresTrafficStore",
    "SqliteTrafficStore",
    "TrafficDataset",
    "TrafficRecorder",
    "TrafficStore",
    "VersionFeedback",
    "add_feedback_routes",
    "default_traffic_store",
    "enable_capture",
    "feedback_summary",
    "traffic_dataset",
]


def default_traffic_store(settings: FrameworkSettings | None = None) -> TrafficStore:
    """The store the settings name: PostgreSQL when ``LLM_SERVER_PROGRAM_STORE`` is set (the
    same schema as the program versions), else the SQLite file ``LLM_SERVER_CAPTURE_PATH``
    (default ``<LLM_PROGRAMS_DIR>/traffic.sqlite3``)."""
    settings = settings if settings is not None else FrameworkSettings()
    if settings.program_store is not None:
        return PostgresTrafficStore(
            settings.program_store.get_secret_value(), schema=settings.program_store_schema
        )
    path = settings.capture_path or settings.llm_programs_dir / "traffic.sqlite3"
    return SqliteTrafficStore(path)


def enable_capture(program_manager: Any, program_id: str, options: CaptureOptions) -> None:
    """Capture ``program_id``'s traffic (what ``register_program(capture=...)`` does).

    Creates ``program_manager.traffic`` (a :class:`TrafficRecorder` on
    :func:`default_traffic_store`, with the model manager's settings) on first use.

    Raises:
        ProgramNotFoundError: The program is not registered.
        ConfigurationError: Bad options, or the store cannot be opened.
    """
    program_manager.registry.entry(program_id)  # refuses an unknown program
    recorder = getattr(program_manager, "traffic", None)
    if recorder is None:
        settings = getattr(program_manager.model_manager, "settings", None)
        recorder = TrafficRecorder(default_traffic_store(settings))
        program_manager.traffic = recorder
    if not isinstance(recorder, TrafficRecorder):
        raise ConfigurationError(
            f"program_manager.traffic must be a TrafficRecorder, got {type(recorder).__name__}"
        )
    recorder.enable(program_id, options, model_manager=program_manager.model_manager)


def feedback_summary(
    traffic: Any, program_id: str, *, kind: str | None = None, since: float | None = None
) -> dict[str, VersionFeedback]:
    """Feedback figures per version of ``program_id``: ``{version: VersionFeedback}``.

    Blocking I/O (one query): call it from a worker thread in async code, or use
    :meth:`TrafficRecorder.afeedback_summary`.

    Args:
        traffic: A program manager (its ``traffic``), a :class:`TrafficRecorder` or a store.
        program_id: The program.
        kind: ``"human"`` or ``"judge"`` to count one kind (default: both).
        since: Only executions served at or after this time (epoch seconds), e.g. since a
            canary release started.
    """
    inner = getattr(traffic, "traffic", None)
    store = getattr(inner if inner is not None else traffic, "store", inner or traffic)
    if not isinstance(store, TrafficStore):
        raise ConfigurationError(f"no traffic store in {type(traffic).__name__}")
    wanted: FeedbackKind | None = (
        "judge" if kind == "judge" else "human" if kind == "human" else None
    )
    return store.feedback_summary(program_id, kind=wanted, since=since)
