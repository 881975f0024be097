"""Live figures per program version: requests, errors by type, latency, tokens and cost.

Every request a program endpoint serves is recorded here (no I/O: a few additions under a
lock). Figures are kept per *scope*: ``""`` outside a canary, the canary's id during one, so the
stable and the canary version are compared over the same period. Latency goes into fixed
buckets (15 % wide, 1 ms to 2 min), so figures from many processes add up exactly and a
percentile is read from the merged buckets (to within one bucket's width).

With a fleet (``LLM_SERVER_REDIS_URL``) the fleet's sync thread writes each process's new counts
to Redis every 100 ms and reads the fleet's totals every second
(:class:`~llm_server.fleet._version_stats.RedisVersionStats`); :meth:`VersionStats.figures` then
answers fleet-wide figures. The same counts go to OpenTelemetry
(``llm_server.program.requests``, ``llm_server.program.duration``) with the version as an
attribute.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics

from llm_server.core.errors import OutputParseError

__all__ = ["LATENCY_BOUNDS_MS", "VersionFigures", "VersionStats"]

_GROWTH = 1.15
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    round(_GROWTH**i, 3) for i in range(int(math.log(120_000) / math.log(_GROWTH)) + 2)
)
"""Upper bounds (ms) of the latency buckets; one more bucket holds everything slower."""

StatsKey = tuple[str, str, str]
"""``(program_id, scope, version)``."""


@dataclass(frozen=True, slots=True)
class VersionFigures:
    """What one program version did over a scope (a canary, or outside any).

    Attributes:
        requests: Requests answered or failed.
        errors: Failed requests by error type (``OutputParseError`` subclasses included).
        parse_failures: Failed requests whose error is an ``OutputParseError`` (the model
            answered, but not in the program's format).
        latency_buckets: Request counts per bucket of :data:`LATENCY_BOUNDS_MS` (+ overflow).
        tokens: Tokens billed (input + output), over the requests that reported usage.
        cost_usd: Cost over the requests whose price is known.
        priced: Requests whose cost is known.
    """

    requests: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    parse_failures: int = 0
    latency_buckets: tuple[int, ...] = ()
    tokens: int = 0
    cost_usd: float = 0.0
    priced: int = 0

    @property
    def failures(self) -> int:
        """Failed requests, every type together."""
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        """Failed requests over requests (``0.0`` without requests)."""
        return self.failures / self.requests if self.requests else 0.0

    @property
    def parse_failure_rate(self) -> float:
        """Parse failures over requests (``0.0`` without requests)."""
        return self.parse_failures / self.requests if self.requests else 0.0

    @property
    def tokens_per_request(self) -> float | None:
        """Mean tokens per request (``None`` without requests)."""
        return self.tokens / self.requests if self.requests else None

    @property
    def cost_per_request(self) -> float | None:
        """Mean cost of the priced requests (``None`` when none was priced)."""
        return self.cost_usd / self.priced if self.priced else None

    def latency_ms(self, quantile: float) -> float | None:
        """The latency below which ``quantile`` of the requests fell (upper bucket bound).

        ``None`` without requests; the overflow bucket reads as 2 minutes.
        """
        total = sum(self.latency_buckets)
        if not total:
            return None
        rank = math.ceil(quantile * total)
        seen = 0
        for index, count in enumerate(self.latency_buckets):
            seen += count
            if seen >= rank:
                return LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]
        return LATENCY_BOUNDS_MS[-1]

    def __add__(self, other: VersionFigures) -> VersionFigures:
        errors = dict(self.errors)
        for name, count in other.errors.items():
            errors[name] = errors.get(name, 0) + count
        width = max(len(self.latency_buckets), len(other.latency_buckets))
        mine = list(self.latency_buckets) + [0] * (width - len(self.latency_buckets))
        theirs = list(other.latency_buckets) + [0] * (width - len(other.latency_buckets))
        return VersionFigures(
            requests=self.requests + other.requests,
            errors=errors,
            parse_failures=self.parse_failures + other.parse_failures,
            latency_buckets=tuple(a + b for a, b in zip(mine, theirs, strict=True)),
            tokens=self.tokens + other.tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            priced=self.priced + other.priced,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: counts, rates, p50/p95/p99 (ms), tokens and cost per request."""
        return {
            "requests": self.requests,
            "errors": dict(sorted(self.errors.items())),
            "error_rate": round(self.error_rate, 6),
            "parse_failures": self.parse_failures,
            "parse_failure_rate": round(self.parse_failure_rate, 6),
            "latency_ms": {
                "p50": self.latency_ms(0.5),
                "p95": self.latency_ms(0.95),
                "p99": self.latency_ms(0.99),
            },
            "tokens_per_request": _round(self.tokens_per_request, 3),
            "cost_per_request_usd": _round(self.cost_per_request, 10),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class _Counts:
    """Counts being added to (under the stats' lock): no allocation per request."""

    __slots__ = ("buckets", "cost_usd", "errors", "parse_failures", "priced", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.parse_failures = 0
        self.buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.tokens = 0
        self.cost_usd = 0.0
        self.priced = 0

    def count(
        self, bucket: int, error: str | None, parse: bool, tokens: int | None, cost: float | None
    ) -> None:
        self.requests += 1
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
        self.parse_failures += parse
        self.buckets[bucket] += 1
        self.tokens += tokens or 0
        if cost is not None:
            self.cost_usd += cost
            self.priced += 1

    def add(self, figures: VersionFigures) -> None:
        self.requests += figures.requests
        for name, value in figures.errors.items():
            self.errors[name] = self.errors.get(name, 0) + value
        self.parse_failures += figures.parse_failures
        for index, value in enumerate(figures.latency_buckets[: len(self.buckets)]):
            self.buckets[index] += value
        self.tokens += figures.tokens
        self.cost_usd += figures.cost_usd
        self.priced += figures.priced

    def frozen(self) -> VersionFigures:
        return VersionFigures(
            requests=self.requests,
            errors=dict(self.errors),
            parse_failures=self.parse_failures,
            latency_buckets=tuple(self.buckets),
            tokens=self.tokens,
            cost_usd=self.cost_usd,
            priced=self.priced,
        )


class VersionStats:
    """This process's figures per program version, and the fleet's when one is attached.

    Args:
        meter_provider: Where the OpenTelemetry metrics go (default: the global provider;
            with no SDK configured they cost nothing).
    """

    def __init__(self, *, meter_provider: metrics.MeterProvider | None = None) -> None:
        self._lock = threading.Lock()
        self._local: dict[StatsKey, _Counts] = {}
        self._pending: dict[StatsKey, _Counts] = {}
        self._fleet: dict[StatsKey, VersionFigures] = {}
        self._shared: Callable[[], bool] | None = None
        meter = metrics.get_meter("llm_server.programs", meter_provider=meter_provider)
        self._requests = meter.create_counter(
            "llm_server.program.requests",
            unit="{request}",
            description="Program requests by version, canary or not, and outcome",
        )
        self._duration = meter.create_histogram(
            "llm_server.program.duration",
            unit="s",
            description="Program request duration by version",
        )

    def record(
        self,
        program_id: str,
        version: str,
        *,
        scope: str = "",
        canary: bool = False,
        latency_s: float,
        error: BaseException | None = None,
        tokens: int | None = None,
        cost_usd: float | None = None,
    ) -> None:
        """Count one request (called once per request, after it ended)."""
        bucket = bisect.bisect_left(LATENCY_BOUNDS_MS, latency_s * 1000.0)
        name = type(error).__name__ if error is not None else None
        parse = isinstance(error, OutputParseError)
        key = (program_id, scope, version)
        with self._lock:
            local = self._local.get(key)
            if local is None:
                local = self._local[key] = _Counts()
            local.count(bucket, name, parse, tokens, cost_usd)
            if self._shared is not None:
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Counts()
                pending.count(bucket, name, parse, tokens, cost_usd)
        attributes: dict[str, str | bool] = {
            "program": program_id,
            "version": version,
            "canary": canary,
            "outcome": "ok" if error is None else type(error).__name__,
        }
        self._requests.add(1, attributes)
        self._duration.record(latency_s, {"program": program_id, "version": version})

    def local(self, program_id: str, version: str, *, scope: str = "") -> VersionFigures:
        """This process's figures for a version."""
        with self._lock:
            found = self._local.get((program_id, scope, version))
            return found.frozen() if found is not None else VersionFigures()

    def figures(self, program_id: str, version: str, *, scope: str = "") -> VersionFigures:
        """The fleet's figures when shared (its totals as last read + this process's unwritten
        counts), else this process's."""
        key = (program_id, scope, version)
        with self._lock:
            if self._shared is None or not self._shared():
                local = self._local.get(key)
                return local.frozen() if local is not None else VersionFigures()
            pending = self._pending.get(key)
            fleet = self._fleet.get(key, VersionFigures())
            return fleet + pending.frozen() if pending is not None else fleet

    @property
    def shared(self) -> bool:
        """Whether :meth:`figures` are the fleet's (Redis attached and answering)."""
        return self._shared is not None and self._shared()

    # --- the fleet's side (called by the sync thread) --------------------------------------

    def attach(self, shared: Callable[[], bool]) -> None:
        """Start keeping unwritten counts for a fleet; ``shared()`` says if it answers now."""
        with self._lock:
            self._shared = shared

    def take_pending(self) -> dict[StatsKey, VersionFigures]:
        """The counts not yet written (the caller writes them or gives them back)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return {key: counts.frozen() for key, counts in pending.items()}

    def give_back(self, pending: Mapping[StatsKey, VersionFigures]) -> None:
        """Counts that could not be written, kept for the next flush."""
        with self._lock:
            for key, figures in pending.items():
                self._pending.setdefault(key, _Counts()).add(figures)

    def keys(self) -> list[StatsKey]:
        """Every (program, scope, version) seen here or in the fleet."""
        with self._lock:
            return sorted(set(self._local) | set(self._fleet))

    def watch(self, program_id: str, version: str, *, scope: str) -> None:
        """Read this version's fleet totals from now on, though this process served none."""
        with self._lock:
            self._fleet.setdefault((program_id, scope, version), VersionFigures())

    def set_fleet(self, key: StatsKey, figures: VersionFigures) -> None:
        """The fleet's totals for ``key`` as just read or written."""
        with self._lock:
            self._fleet[key] = figures

    def add_fleet(self, key: StatsKey, figures: VersionFigures) -> None:
        """Counts this process just wrote, added to the fleet's totals known for ``key``."""
        with self._lock:
            self._fleet[key] = self._fleet.get(key, VersionFigures()) + figures
