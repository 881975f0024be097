"""``MetadataCollector``: the response envelope's ``metadata`` block."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from llm_server.core._ids import new_uuid7

__all__ = ["MetadataCollector", "new_execution_id", "utc_timestamp"]


def new_execution_id() -> str:
    """A fresh, unique execution id: a version-7 UUID string (time-ordered, 74 random bits)."""
    return new_uuid7()


# (whole second since the epoch, its "YYYY-MM-DDTHH:MM:SS" in UTC): requests follow each other
# within a second, and formatting a datetime per request costs ~2 us. Two threads racing on
# this one-entry cache only format the same second twice.
_second: list[tuple[int, str]] = [(-1, "")]


def utc_timestamp() -> str:
    """The current time in ISO-8601 UTC with microseconds and a ``Z`` suffix."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached = _second[0]
    if cached[0] != seconds:
        # The same value datetime.now(UTC) gives: the system clock, microseconds floored.
        prefix = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")[:-6]
        cached = _second[0] = (seconds, prefix)
    return f"{cached[1]}.{nanos // 1000:06d}Z"


# Dumps of frozen pydantic models whose dump holds only scalars (a program's metadata is one
# such object for as long as its version is served: ~2 us a request), by id with the object
# itself held, so an id is never reused while it is cached.
_FROZEN_DUMPS: dict[int, tuple[Any, dict[str, Any]]] = {}
_MAX_FROZEN_DUMPS = 256
_SCALARS = (str, int, float, bool, type(None))


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is dict:  # the usual model block: no attribute or ABC look-up (~0.5 us)
        return dict(value)
    cached = _FROZEN_DUMPS.get(id(value))
    if cached is not None and cached[0] is value:
        return dict(cached[1])
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        result = dump(by_alias=True)
        if not isinstance(result, Mapping):
            return {}
        frozen = getattr(value, "model_config", {}).get("frozen") is True
        if frozen and all(type(v) in _SCALARS for v in result.values()):
            if len(_FROZEN_DUMPS) >= _MAX_FROZEN_DUMPS:
                _FROZEN_DUMPS.clear()
            _FROZEN_DUMPS[id(value)] = (value, dict(result))
        return dict(result)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"expected a mapping or a pydantic model, got {type(value).__name__}")


class MetadataCollector:
    """Builds the envelope's ``metadata`` consistently for every endpoint."""

    @staticmethod
    def collect_response_metadata(
        *,
        model_id: str,
        program_metadata: Any = None,
        performance_metrics: Mapping[str, Any] | None = None,
        model_info: Any = None,
        execution_id: str | None = None,
    ) -> dict[str, Any]:
        """Return ``{program, model, performance, execution_id, timestamp}``.

        Args:
            model_id: The requested model id (used when ``model_info`` is empty).
            program_metadata: The program block (a mapping or a pydantic model).
            performance_metrics: ``PerformanceMetrics.get_summary()``.
            model_info: The model block (``ModelInfo.model_dump(by_alias=True)`` or the model).
            execution_id: The request's id (default: the current log context's, else new).

        When a fallback model answered, ``model.id`` names the model that answered and
        ``model.requested_id`` the one that was asked for.
        """
        performance = dict(performance_metrics or {})
        model = _as_dict(model_info) or {"id": model_id}
        fallback = performance.get("fallback")
        answered = fallback.get("answered_by") if isinstance(fallback, Mapping) else None
        if answered not in (None, model_id) and model.get("id") != answered:
            # The caller passed the requested model's block: name the one that answered.
            model = {"id": answered, "requested_id": model_id}
        return {
            "program": _as_dict(program_metadata),
            "model": model,
            "performance": performance,
            "execution_id": execution_id or _current_execution_id() or new_execution_id(),
            "timestamp": utc_timestamp(),
        }


def _current_execution_id() -> str | None:
    try:
        return _execution_id_source()()
    except Exception:  # logging context is optional
        return None


@functools.cache
def _execution_id_source() -> Callable[[], str | None]:
    # Imported once, lazily: an import statement on every request is not free.
    from llm_server.core.telemetry._logging import current_execution_id

    return current_execution_id
