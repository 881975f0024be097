"""Capture options, redaction and the record a sampled request becomes (private)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import redact_value
from llm_server.traffic._records import CaptureValues, ExecutionValues

if TYPE_CHECKING:
    from llm_server.traffic._judge import OnlineEvaluation

__all__ = ["CaptureOptions", "Redactor", "build_capture", "dropped_counter"]

Redactor = Callable[[dict[str, Any]], dict[str, Any]]
"""``{"inputs": {...}, "outputs": {...} | None} -> the same shape``, redacted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureOptions:
    """How one program's traffic is captured (opt-in, per program).

    Attributes:
        sample_rate: Share of requests captured in full (0 to 1). Every request of the program
            still leaves a small record (execution id, version, tenant, time) so feedback on
            it can name the version that answered.
        retention_days: Days a record is kept; older ones are deleted periodically.
        redact_fields: Input or output field names (at any depth of their values) whose
            values are stored as ``[REDACTED]``.
        redact: A hook given ``{"inputs": ..., "outputs": ...}`` (after ``redact_fields``)
            that returns it redacted; a hook that raises drops the capture (counted).
        evaluation: Online evaluation of a sample of the captured requests (a metric or a
            DSPy judge), run in the background.
    """

    sample_rate: float = 1.0
    retention_days: float = 30.0
    redact_fields: AbstractSet[str] = field(default_factory=frozenset)
    redact: Redactor | None = None
    evaluation: OnlineEvaluation | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigurationError(
                f"capture sample_rate must be between 0 and 1, got {self.sample_rate!r}"
            )
        if not (self.retention_days > 0 and math.isfinite(self.retention_days)):
            raise ConfigurationError(
                f"capture retention_days must be a positive number, got {self.retention_days!r}"
            )
        if isinstance(self.redact_fields, str) or not isinstance(self.redact_fields, Iterable):
            raise ConfigurationError("capture redact_fields must be a set of field names")
        object.__setattr__(self, "redact_fields", frozenset(self.redact_fields))


def _number(value: Any) -> float | None:
    kind = type(value)  # the JSON types by exact type first: the ABC checks cost more
    if kind is int or kind is float:
        return float(value)
    return float(value) if isinstance(value, int | float) and kind is not bool else None


def build_capture(
    execution: ExecutionValues,
    options: CaptureOptions,
    *,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any] | None,
    metadata: Mapping[str, Any],
    error_type: str | None,
    model_id: str,
) -> CaptureValues:
    """The fields of a sampled request's record (``CapturedRequest(*fields)``): redacted,
    with its figures read from its envelope's (or its failure's) ``metadata``."""
    inputs = redact_value(inputs or {}, options.redact_fields)
    outputs = None if outputs is None else redact_value(outputs, options.redact_fields)
    if options.redact is not None:
        redacted = options.redact({"inputs": inputs, "outputs": outputs})
        inputs, outputs = redacted["inputs"], redacted.get("outputs")
    performance = metadata.get("performance") or {}
    tokens = performance.get("tokens") or {}
    input_tokens, output_tokens = _number(tokens.get("input")), _number(tokens.get("output"))
    execution_id, program_id, version, tenant, served_at = execution
    return (
        execution_id,
        program_id,
        version,
        bool((metadata.get("program") or {}).get("canary", False)),
        model_id,
        inputs,
        outputs,
        None if input_tokens is None else int(input_tokens),
        None if output_tokens is None else int(output_tokens),
        _number(tokens.get("cost_usd")),
        _number((performance.get("timing") or {}).get("total_ms")),
        error_type,
        tenant,
        served_at,
    )


def dropped_counter() -> Any:
    from opentelemetry import metrics

    return metrics.get_meter("llm_server.traffic").create_counter(
        "llm_server.traffic.captures_dropped",
        unit="{capture}",
        description=(
            "Captures dropped: the capture queue was full, redaction failed, the store "
            "refused the record, or the recorder was closed"
        ),
    )
