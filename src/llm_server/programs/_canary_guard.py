"""The canary guard: thresholds, and the rule that decides to roll back or promote.

The rule, for the two rates (errors, parse failures): a canary is rolled back when its rate
is above the stable version's by more than the allowed increase *with confidence*: the lower
end of the canary's Wilson score interval minus the upper end of the stable version's is over
the allowed increase. Wilson intervals stay honest with few requests and rates near zero
(where a normal approximation says nothing, or claims too much).

The rates are tested at *looks*, not on every tick: the first when the canary has
``min_requests``, then each time its requests grew by a quarter (``n = min x 1.25^(k-1)``).
Look ``k`` spends ``alpha x 6 / (pi^2 k^2)`` of the false-alarm budget (these shares sum to
``alpha``), so over a canary of any length the chance of rolling back a version that is no
worse than allowed stays under ``alpha``, while the confidence asked for grows only slowly
(look 10 of a 1 % budget: z = 3.9): a clear regression (a version whose every answer fails)
is rolled back at the first look, a small one once the sample shows it.

Latency is judged at the same looks with the same confidence, as a proportion too: a canary
whose p95 is within ``max_p95_ratio`` of stable's has at most 5 % of its requests slower than
``max_p95_ratio x stable p95``, so a breach is the Wilson lower bound of that share over 5 %.
(A plain ratio of two p95s was tried first: under an unthrottled load it rolled back an
identical canary.) Cost (or tokens) per request is compared at the looks as a ratio of means:
for the same prompts it barely varies from request to request.

Feedback (optional, ``max_score_drop``): once each version has ``min_scored_feedback`` scored
feedback items of ``score_kind`` (user feedback by default, or a judge's) over the canary's
period (see :mod:`llm_server.traffic`), the canary is rolled back when its mean score is below
stable's by more than ``max_score_drop``. This is a plain comparison of two means, tested on
every guard pass (feedback arrives after the requests it is about, so not only at the looks);
without enough scored feedback it decides nothing, and the other tests decide as before.

Auto-promote: with ``promote_after_requests`` (and ``promote_after_s``), a canary that reached
both without a breach is promoted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from statistics import NormalDist
from typing import Any

from llm_server.core.errors import ProgramError
from llm_server.programs._version_stats import LATENCY_BOUNDS_MS, VersionFigures

__all__ = [
    "CanaryGuard",
    "GuardDecision",
    "ScoreFigures",
    "decide",
    "look_index",
    "wilson_interval",
]

_LOOK_GROWTH = 1.25
_P95_SHARE = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryGuard:
    """When a canary is rolled back (or promoted) on its own.

    Attributes:
        max_error_rate_increase: Allowed rise of the error rate over stable (0.02: 2 points).
        max_parse_failure_increase: Allowed rise of the parse-failure rate over stable.
        max_p95_ratio: Allowed canary p95 latency over stable p95.
        max_cost_ratio: Allowed canary cost (or tokens, when unpriced) per request over stable.
        min_requests: Requests each version needs before anything is decided.
        alpha: The false-alarm budget of the rate tests over the whole canary.
        promote_after_requests: Promote at the first look (requests x1.25) after the canary
            served this many requests without a breach (``None``: never on its own).
        promote_after_s: ... and ran at least this long.
        max_score_drop: Allowed fall of the canary's mean feedback score under stable's
            (same units as the scores; ``None``: feedback is not judged).
        min_scored_feedback: Scored feedback items each version needs before
            ``max_score_drop`` is tested.
        score_kind: Whose scores are compared: ``"human"`` (user feedback) or ``"judge"``.
    """

    max_error_rate_increase: float = 0.02
    max_parse_failure_increase: float = 0.02
    max_p95_ratio: float = 1.5
    max_cost_ratio: float = 1.5
    min_requests: int = 50
    alpha: float = 0.01
    promote_after_requests: int | None = None
    promote_after_s: float = 0.0
    max_score_drop: float | None = None
    min_scored_feedback: int = 20
    score_kind: str = "human"

    def __post_init__(self) -> None:
        for name in ("max_error_rate_increase", "max_parse_failure_increase"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ProgramError(f"canary guard: {name} must be in [0, 1), not {value!r}")
        for name in ("max_p95_ratio", "max_cost_ratio"):
            ratio = getattr(self, name)
            if not ratio >= 1.0:
                raise ProgramError(f"canary guard: {name} must be >= 1, not {ratio!r}")
        if self.min_requests < 1:
            raise ProgramError(f"canary guard: min_requests must be >= 1, not {self.min_requests}")
        if not 0.0 < self.alpha < 0.5:
            raise ProgramError(f"canary guard: alpha must be in (0, 0.5), not {self.alpha!r}")
        if self.promote_after_requests is not None and self.promote_after_requests < 1:
            raise ProgramError("canary guard: promote_after_requests must be >= 1")
        if self.promote_after_s < 0:
            raise ProgramError("canary guard: promote_after_s must be >= 0")
        drop = self.max_score_drop
        if drop is not None and (isinstance(drop, bool) or not math.isfinite(drop) or drop < 0):
            raise ProgramError(f"canary guard: max_score_drop must be >= 0, not {drop!r}")
        if self.min_scored_feedback < 1:
            raise ProgramError(
                f"canary guard: min_scored_feedback must be >= 1, not {self.min_scored_feedback}"
            )
        if self.score_kind not in ("human", "judge"):
            raise ProgramError(
                f"canary guard: score_kind must be 'human' or 'judge', not {self.score_kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as JSON (stored with the canary)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryGuard:
        """Thresholds read back from :meth:`to_dict` (unknown keys are refused).

        Raises:
            ProgramError: An unknown key or a value out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProgramError(f"canary guard: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """What the guard decided: ``rollback`` or ``promote``, and why (recorded as the reason)."""

    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScoreFigures:
    """Scored feedback of one version over the canary's period: how many, and their mean."""

    scored: int
    mean_score: float | None


def _score_breach(
    guard: CanaryGuard, stable: ScoreFigures | None, canary: ScoreFigures | None
) -> str | None:
    drop, needed = guard.max_score_drop, guard.min_scored_feedback
    if drop is None or stable is None or canary is None:
        return None
    if min(stable.scored, canary.scored) < needed:
        return None
    if stable.mean_score is None or canary.mean_score is None:
        return None
    if stable.mean_score - canary.mean_score <= drop:
        return None
    return (
        f"feedback mean score {canary.mean_score:.3g} over {canary.scored} scored items against "
        f"stable {stable.mean_score:.3g} over {stable.scored}: "
        f"{stable.mean_score - canary.mean_score:.3g} lower (allowed {drop:g})"
    )


def wilson_interval(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion at ``z`` standard deviations."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def look_index(requests: int, min_requests: int) -> int:
    """The look a canary with ``requests`` is at (0: not yet at ``min_requests``)."""
    if requests < min_requests:
        return 0
    return 1 + int(math.log(requests / min_requests) / math.log(_LOOK_GROWTH) + 1e-9)


def _z_for_look(alpha: float, look: int) -> float:
    spent = alpha * 6.0 / (math.pi**2 * look * look)
    return NormalDist().inv_cdf(1.0 - spent / 2.0)  # split between the two one-sided bounds


def _rate_breach(
    name: str, canary: tuple[int, int], stable: tuple[int, int], allowed: float, z: float
) -> str | None:
    low, _ = wilson_interval(canary[0], canary[1], z)
    _, high = wilson_interval(stable[0], stable[1], z)
    if low - high > allowed:
        return (
            f"{name} {canary[0]}/{canary[1]} ({canary[0] / canary[1]:.1%}) against stable "
            f"{stable[0]}/{stable[1]} ({stable[0] / max(stable[1], 1):.1%}): at least "
            f"{low - high:.1%} higher (allowed {allowed:.1%}; z={z:.2f})"
        )
    return None


def decide(
    guard: CanaryGuard,
    stable: VersionFigures,
    canary: VersionFigures,
    *,
    look: int,
    running_s: float,
    stable_scores: ScoreFigures | None = None,
    canary_scores: ScoreFigures | None = None,
) -> GuardDecision | None:
    """Judge the canary at ``look`` (see :func:`look_index`); ``None``: keep going.

    The feedback scores (when the guard has ``max_score_drop`` and both are given) are tested
    first, at any look. Otherwise nothing is decided between looks (``look`` 0) or before both
    versions have ``min_requests``; at a look the rates, the latency and the cost are tested,
    then promotion when nothing breached and the promotion thresholds are met.
    """
    scores = _score_breach(guard, stable_scores, canary_scores)
    if scores is not None:
        return GuardDecision("rollback", scores)
    if min(canary.requests, stable.requests) < guard.min_requests or look < 1:
        return None  # every test is taken at a look: see the module docstring
    breach = _first_breach(guard, stable, canary, _z_for_look(guard.alpha, look))
    if breach is not None:
        return GuardDecision("rollback", breach)
    if (
        guard.promote_after_requests is not None
        and canary.requests >= guard.promote_after_requests
        and running_s >= guard.promote_after_s
    ):
        return GuardDecision(
            "promote",
            f"no breach over {canary.requests} canary requests in {running_s:.0f} s "
            f"(errors {canary.error_rate:.1%} vs {stable.error_rate:.1%}, parse failures "
            f"{canary.parse_failure_rate:.1%} vs {stable.parse_failure_rate:.1%})",
        )
    return None


def _first_breach(
    guard: CanaryGuard, stable: VersionFigures, canary: VersionFigures, z: float
) -> str | None:
    """Why the canary breaches its thresholds at ``z`` (the first reason found), if it does."""
    for name, c, s, allowed in (
        (
            "parse failures",
            canary.parse_failures,
            stable.parse_failures,
            guard.max_parse_failure_increase,
        ),
        ("errors", canary.failures, stable.failures, guard.max_error_rate_increase),
    ):
        breach = _rate_breach(name, (c, canary.requests), (s, stable.requests), allowed, z)
        if breach is not None:
            return breach
    breach = _latency_breach(guard, stable, canary, z)
    if breach is not None:
        return breach
    cost = _cost_ratio(canary, stable)
    if cost is not None and cost[0] > guard.max_cost_ratio:
        return f"{cost[1]} per request x{cost[0]:.2f} of stable (allowed x{guard.max_cost_ratio:g})"
    return None


def _latency_breach(
    guard: CanaryGuard, stable: VersionFigures, canary: VersionFigures, z: float
) -> str | None:
    """The p95 test: are more than 5 % of canary requests slower than the allowed p95?

    A canary whose p95 is within ``max_p95_ratio`` of stable's has at most 5 % of its requests
    above ``max_p95_ratio x stable p95``; a breach is the Wilson lower bound of that share
    over 5 %. Requests count as slower only when their whole latency bucket is.
    """
    stable_p95 = stable.latency_ms(0.95)
    if stable_p95 is None or not canary.latency_buckets:
        return None
    limit = guard.max_p95_ratio * stable_p95
    slower = sum(
        count
        for index, count in enumerate(canary.latency_buckets)
        if index > 0 and LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS)) - 1] >= limit
    )
    low, _ = wilson_interval(slower, canary.requests, z)
    if low <= _P95_SHARE:
        return None
    return (
        f"p95 latency {canary.latency_ms(0.95):g} ms against stable {stable_p95:g} ms: "
        f"{slower}/{canary.requests} canary requests slower than {limit:g} ms "
        f"(x{guard.max_p95_ratio:g} stable p95), at least {low:.1%} where 5% is allowed; z={z:.2f}"
    )


def _cost_ratio(canary: VersionFigures, stable: VersionFigures) -> tuple[float, str] | None:
    """Cost per request over stable's; tokens per request when either is unpriced."""
    c_cost, s_cost = canary.cost_per_request, stable.cost_per_request
    if c_cost is not None and s_cost is not None and s_cost > 0:
        return c_cost / s_cost, "cost"
    c_tokens, s_tokens = canary.tokens_per_request, stable.tokens_per_request
    if c_tokens is not None and s_tokens:
        return c_tokens / s_tokens, "tokens"
    return None
