"""The SQL shared by the SQLite and PostgreSQL traffic stores (private).

Three tables: ``captures`` (the sampled requests, redacted), ``executions`` (the served
requests of a program with capture on that were not sampled: id, program, version, tenant,
time; enough for feedback to name the version) and ``feedback``.
Times are seconds since the epoch; inputs and outputs are JSON text. The queries are written
with ``?`` placeholders; the PostgreSQL store turns them into ``%s``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from llm_server.traffic._records import (
    CapturedRequest,
    CaptureValues,
    Execution,
    ExecutionValues,
    Feedback,
    FeedbackKind,
    VersionFeedback,
    field_values,
)

TABLES = (
    """CREATE TABLE IF NOT EXISTS {p}executions (
        execution_id TEXT PRIMARY KEY, program_id TEXT NOT NULL, version TEXT NOT NULL,
        tenant TEXT, served_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {p}captures (
        execution_id TEXT PRIMARY KEY, program_id TEXT NOT NULL, version TEXT NOT NULL,
        canary BOOLEAN NOT NULL, model_id TEXT NOT NULL, inputs TEXT NOT NULL, outputs TEXT,
        input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE PRECISION,
        latency_ms DOUBLE PRECISION, error_type TEXT, tenant TEXT,
        served_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {p}feedback (
        execution_id TEXT NOT NULL, program_id TEXT NOT NULL, version TEXT NOT NULL,
        kind TEXT NOT NULL, score DOUBLE PRECISION, label TEXT, comment TEXT, tenant TEXT,
        served_at DOUBLE PRECISION NOT NULL, given_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {n}executions_program ON {p}executions (program_id, served_at)",
    "CREATE INDEX IF NOT EXISTS {n}captures_program ON {p}captures (program_id, served_at)",
    "CREATE INDEX IF NOT EXISTS {n}feedback_program ON {p}feedback (program_id, version)",
    "CREATE INDEX IF NOT EXISTS {n}executions_tenant ON {p}executions (tenant)",
)

CAPTURE_COLUMNS = (
    "execution_id, program_id, version, canary, model_id, inputs, outputs, input_tokens, "
    "output_tokens, cost_usd, latency_ms, error_type, tenant, served_at"
)
FEEDBACK_COLUMNS = (
    "execution_id, program_id, version, kind, score, label, comment, tenant, served_at, given_at"
)


# Built once: json.dumps with options builds a new encoder per call (~4 us of a capture's ~10)
_stdlib_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode
# orjson (already installed with DSPy) encodes a one-field mapping in 0.15 us against the
# stdlib's 1.2 (the writer encodes the inputs and outputs of every capture). Dates and
# dataclasses go to ``default`` as they do with the stdlib encoder; a plain Enum member, which
# redact_value has already made a string unless a redaction hook put it back, is its value.
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _default(value: Any) -> Any:
    """What orjson does not write itself: a float subclass as its number (numpy's float64,
    which the stdlib writes as a number too), anything else as ``str``, as the stdlib does."""
    return float(value) if isinstance(value, float) else str(value)


def _json(value: Mapping[str, Any]) -> str:
    """A captured mapping as JSON text, keys sorted, as the stdlib encoder writes it but for
    spacing and number spelling (``1e-05`` is ``0.00001``): the same values when read back.

    orjson writes NaN and infinities as ``null`` and refuses integers beyond 64 bits and
    strings that are not valid UTF-8; the stdlib encoder keeps the first two (``NaN``,
    ``Infinity``) and lets SQLite refuse the third as before. So what orjson refuses, and text
    with ``null`` anywhere in it (a ``None``, a number orjson changed, or the word in a
    string), take the stdlib encoder.
    """
    value = value if type(value) is dict else dict(value)  # orjson writes only dicts as objects
    try:
        text = orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _stdlib_json(value)
    if b"null" in text:
        return _stdlib_json(value)
    return text.decode()


def capture_row(values: CaptureValues) -> tuple[Any, ...]:
    """A capture's row: its fields, inputs and outputs as JSON text."""
    outputs = values[6]
    return (*values[:5], _json(values[5]), None if outputs is None else _json(outputs), *values[7:])


def feedback_row(feedback: Feedback) -> tuple[Any, ...]:
    return (
        feedback.execution_id,
        feedback.program_id,
        feedback.version,
        feedback.kind,
        feedback.score,
        feedback.label,
        feedback.comment,
        feedback.tenant,
        feedback.served_at,
        feedback.given_at,
    )


def capture_from(row: Sequence[Any]) -> CapturedRequest:
    return CapturedRequest(
        execution_id=row[0],
        program_id=row[1],
        version=row[2],
        canary=bool(row[3]),
        model_id=row[4],
        inputs=json.loads(row[5]),
        outputs=None if row[6] is None else json.loads(row[6]),
        input_tokens=row[7],
        output_tokens=row[8],
        cost_usd=row[9],
        latency_ms=row[10],
        error_type=row[11],
        tenant=row[12],
        served_at=float(row[13]),
    )


def feedback_from(row: Sequence[Any]) -> Feedback:
    kind: FeedbackKind = "judge" if row[3] == "judge" else "human"
    return Feedback(
        execution_id=row[0],
        program_id=row[1],
        version=row[2],
        kind=kind,
        score=row[4],
        label=row[5],
        comment=row[6],
        tenant=row[7],
        served_at=float(row[8]),
        given_at=float(row[9]),
    )


def where(program_id: str, version: str | None, since: float | None) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause on program, version and time, with its parameters."""
    clauses, params = ["program_id = ?"], list[Any]([program_id])
    if version is not None:
        clauses.append("version = ?")
        params.append(version)
    if since is not None:
        clauses.append("served_at >= ?")
        params.append(since)
    return " AND ".join(clauses), params


def summarize(
    totals: Sequence[Sequence[Any]], labels: Sequence[Sequence[Any]]
) -> dict[str, VersionFeedback]:
    """Per-version figures from ``(version, count, scored, mean)`` and
    ``(version, label, count)`` rows."""
    by_label: dict[str, dict[str, int]] = {}
    for version, label, count in labels:
        by_label.setdefault(version, {})[label] = int(count)
    return {
        version: VersionFeedback(
            count=int(count),
            scored=int(scored),
            mean_score=None if mean is None else float(mean),
            labels=by_label.get(version, {}),
        )
        for version, count, scored, mean in totals
    }


class SqlTrafficStore:
    """The queries of a traffic store; subclasses run them (``?`` placeholders).

    Tables are named ``{prefix}executions``, ``{prefix}captures`` and ``{prefix}feedback``.
    """

    _prefix = ""

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _change(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run the statements in one transaction; the rows they changed."""
        raise NotImplementedError

    def _insert_many(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """``INSERT``s of many rows each, in one transaction, skipping ids already stored."""
        raise NotImplementedError

    def _t(self, table: str) -> str:
        return self._prefix + table

    def write(self, executions: Sequence[Execution], captures: Sequence[CapturedRequest]) -> None:
        """Store a batch in one transaction (an id already stored is kept)."""
        self.write_values(
            [field_values(e) for e in executions], [field_values(c) for c in captures]
        )

    def write_values(
        self, executions: Sequence[ExecutionValues], captures: Sequence[CaptureValues]
    ) -> None:
        """:meth:`write`, given the records' fields (what the recorder hands a SQL store).

        A captured request's row holds its execution too, so only the executions not captured
        get an ``executions`` row (a row there costs SQLite a table and three index inserts):
        one row per capture instead of two halved SQLite's CPU per capture
        (benchmarks/e2e/capture_cpu.py).
        """
        captured = {capture[0] for capture in captures}
        self._insert_many(
            [
                (
                    f"INSERT INTO {self._t('executions')} VALUES (?, ?, ?, ?, ?)",
                    [e for e in executions if e[0] not in captured],
                ),
                (
                    f"INSERT INTO {self._t('captures')} ({CAPTURE_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [capture_row(c) for c in captures],
                ),
            ]
        )

    def add_feedback(self, feedback: Feedback) -> None:
        """Store one feedback record."""
        self._change(
            [
                (
                    f"INSERT INTO {self._t('feedback')} ({FEEDBACK_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    feedback_row(feedback),
                )
            ]
        )

    def find_execution(self, execution_id: str) -> Execution | None:
        """The stored execution, or ``None``."""
        columns = "execution_id, program_id, version, tenant, served_at"
        rows = self._query(  # captured: in captures (older stores: in both)
            f"SELECT {columns} FROM {self._t('captures')} WHERE execution_id = ? UNION ALL "
            f"SELECT {columns} FROM {self._t('executions')} WHERE execution_id = ? LIMIT 1",
            (execution_id, execution_id),
        )
        if not rows:
            return None
        eid, program_id, version, tenant, served_at = rows[0]
        return Execution(eid, program_id, version, tenant, float(served_at))

    def feedback_summary(
        self, program_id: str, *, kind: FeedbackKind | None = None, since: float | None = None
    ) -> dict[str, VersionFeedback]:
        """Feedback figures per version (on executions served since ``since``)."""
        clause, params = where(program_id, None, since)
        if kind is not None:
            clause, params = clause + " AND kind = ?", [*params, kind]
        totals = self._query(
            "SELECT version, COUNT(*), COUNT(score), AVG(score) "
            f"FROM {self._t('feedback')} WHERE {clause} GROUP BY version",
            params,
        )
        labels = self._query(
            f"SELECT version, label, COUNT(*) FROM {self._t('feedback')} WHERE {clause} "
            "AND label IS NOT NULL GROUP BY version, label",
            params,
        )
        return summarize(totals, labels)

    def captures(
        self, program_id: str, *, version: str | None = None, since: float | None = None
    ) -> list[CapturedRequest]:
        """Captured requests, oldest first."""
        clause, params = where(program_id, version, since)
        rows = self._query(
            f"SELECT {CAPTURE_COLUMNS} FROM {self._t('captures')} WHERE {clause} "
            "ORDER BY served_at, execution_id",
            params,
        )
        return [capture_from(row) for row in rows]

    def feedback(
        self, program_id: str, *, version: str | None = None, since: float | None = None
    ) -> list[Feedback]:
        """Feedback records, oldest first."""
        clause, params = where(program_id, version, since)
        rows = self._query(
            f"SELECT {FEEDBACK_COLUMNS} FROM {self._t('feedback')} WHERE {clause} "
            "ORDER BY given_at, execution_id",
            params,
        )
        return [feedback_from(row) for row in rows]

    def delete_served_before(self, program_id: str, cutoff: float) -> int:
        """Retention: delete what was served before ``cutoff``."""
        return self._change(
            [
                (
                    f"DELETE FROM {self._t(table)} WHERE program_id = ? AND served_at < ?",
                    (program_id, cutoff),
                )
                for table in ("feedback", "captures", "executions")
            ]
        )

    def forget(self, tenant: str) -> int:
        """Delete every record of ``tenant``."""
        return self._change(
            [
                (f"DELETE FROM {self._t(table)} WHERE tenant = ?", (tenant,))
                for table in ("feedback", "captures", "executions")
            ]
        )
