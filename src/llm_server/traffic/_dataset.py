"""Datasets from captured traffic: examples, and a fingerprint of query and rows (private)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, overload

from llm_server.core.errors import InputError
from llm_server.traffic._records import CapturedRequest, Feedback, FeedbackKind, TrafficStore

__all__ = ["TrafficDataset", "traffic_dataset"]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class TrafficDataset(Sequence[Any]):
    """Examples built from a program's captured traffic, and how they were chosen.

    A sequence of ``dspy.Example`` (inputs marked with ``with_inputs``), usable as
    ``optimize_program(trainset=...)`` or ``devset=``; the new version's manifest then records
    :attr:`provenance` (the query and the fingerprint).

    Attributes:
        examples: The examples, oldest request first.
        execution_ids: The execution each example came from, in the same order.
        query: The selection (program, version, since, min_score, label, limit, kind).
        fingerprint: sha256 of the canonical JSON of the query and the rows: the same query on
            the same records gives the same fingerprint.
    """

    examples: tuple[Any, ...]
    execution_ids: tuple[str, ...]
    query: Mapping[str, Any]
    fingerprint: str

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self.examples[index]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.examples)

    @property
    def provenance(self) -> dict[str, Any]:
        """What an optimization records about this dataset: source, query, fingerprint, size."""
        return {
            "source": "traffic",
            "query": dict(self.query),
            "fingerprint": self.fingerprint,
            "size": len(self.examples),
        }

    def write_jsonl(self, out: IO[str]) -> int:
        """Write one JSON object per example (``execution_id``, ``inputs``, ``outputs``).

        Returns:
            The lines written.
        """
        for execution_id, example in zip(self.execution_ids, self.examples, strict=True):
            inputs = example.inputs().toDict()
            outputs = example.labels().toDict()
            line = {"execution_id": execution_id, "inputs": inputs, "outputs": outputs}
            out.write(_canonical(line) + "\n")
        return len(self.examples)


def _epoch(since: datetime | float | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise InputError("since must be timezone-aware (e.g. datetime.now(UTC))")
        return since.timestamp()
    return float(since)


def _store_of(traffic: Any) -> TrafficStore:
    inner = getattr(traffic, "traffic", None)  # a ProgramManager
    if inner is not None:
        traffic = inner
    store = getattr(traffic, "store", traffic)  # a TrafficRecorder
    if not isinstance(store, TrafficStore):
        raise InputError(
            "traffic_dataset needs a TrafficRecorder, a TrafficStore or a ProgramManager "
            f"with capture enabled, got {type(traffic).__name__}"
        )
    return store


def _verdicts(
    feedback: Sequence[Feedback], kind: FeedbackKind | None
) -> tuple[dict[str, float], dict[str, set[str]]]:
    scores: dict[str, list[float]] = {}
    labels: dict[str, set[str]] = {}
    for record in feedback:
        if kind is not None and record.kind != kind:
            continue
        if record.score is not None:
            scores.setdefault(record.execution_id, []).append(record.score)
        if record.label is not None:
            labels.setdefault(record.execution_id, set()).add(record.label)
    means = {eid: math.fsum(values) / len(values) for eid, values in scores.items()}
    return means, labels


def traffic_dataset(
    traffic: Any,
    program_id: str,
    *,
    version: str | None = None,
    since: datetime | float | None = None,
    min_score: float | None = None,
    label: str | None = None,
    limit: int | None = None,
    kind: FeedbackKind | None = None,
) -> TrafficDataset:
    """Build ``dspy.Example``s from a program's captured, successful requests.

    Each example holds the captured (redacted) inputs and outputs; the inputs are marked with
    ``with_inputs``. Blocking I/O: call it from a script, a job or a worker thread.

    Args:
        traffic: A :class:`TrafficRecorder`, a traffic store, or a program manager whose
            ``traffic`` is set.
        program_id: The program.
        version: Only requests this version answered.
        since: Only requests served at or after this time (aware datetime or epoch seconds).
        min_score: Only requests whose mean feedback score is at least this.
        label: Only requests with at least one feedback record carrying this label.
        limit: At most this many, the most recent.
        kind: Count only ``"human"`` or only ``"judge"`` feedback (default: both).

    Returns:
        The dataset with its query and fingerprint.

    Raises:
        InputError: A bad argument.
    """
    import dspy

    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit!r}")
    store = _store_of(traffic)
    after = _epoch(since)
    captures: list[CapturedRequest] = [
        capture
        for capture in store.captures(program_id, version=version, since=after)
        if capture.error_type is None and capture.outputs is not None
    ]
    if min_score is not None or label is not None:
        means, labels = _verdicts(store.feedback(program_id, version=version, since=after), kind)
        if min_score is not None:
            captures = [c for c in captures if means.get(c.execution_id, -math.inf) >= min_score]
        if label is not None:
            captures = [c for c in captures if label in labels.get(c.execution_id, ())]
    if limit is not None:
        captures = captures[-limit:]
    query = {
        "program_id": program_id,
        "version": version,
        "since": after,
        "min_score": min_score,
        "label": label,
        "limit": limit,
        "kind": kind,
    }
    rows = [[c.execution_id, dict(c.inputs), dict(c.outputs or {})] for c in captures]
    fingerprint = hashlib.sha256(_canonical({"query": query, "rows": rows}).encode()).hexdigest()
    examples = tuple(
        dspy.Example(**dict(c.inputs), **dict(c.outputs or {})).with_inputs(*c.inputs)
        for c in captures
    )
    return TrafficDataset(
        examples=examples,
        execution_ids=tuple(c.execution_id for c in captures),
        query=query,
        fingerprint=fingerprint,
    )
