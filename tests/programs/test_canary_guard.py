"""The canary guard's rule, the hash split, and canaries kept in memory (files)."""

from __future__ import annotations

import bisect
import math
import random

import pytest

from llm_server.core.errors import ProgramError
from llm_server.models.canary import (
    Canary,
    CanaryGuard,
    LocalCanaryBook,
    ScoreFigures,
    VersionFigures,
    decide,
    wilson_interval,
)
from llm_server.programs._canary import on_canary
from llm_server.programs._canary_guard import look_index
from llm_server.programs._version_stats import LATENCY_BOUNDS_MS

WEIGHT = 0.1


def figures(requests: int, failures: int = 0, *, parse: bool = False) -> VersionFigures:
    errors = {"OutputParseError" if parse else "ProviderError": failures} if failures else {}
    return VersionFigures(requests=requests, errors=errors, parse_failures=failures if parse else 0)


def binomial(rng: random.Random, trials: int, p: float) -> int:
    """Successes in ``trials`` (skipping from one success to the next: geometric gaps)."""
    if p >= 1.0:
        return trials
    if p <= 0.0:
        return 0
    count, position, log_q = 0, -1, math.log(1.0 - p)
    while True:
        position += 1 + int(math.log(1.0 - rng.random()) / log_q)
        if position >= trials:
            return count
        count += 1


def simulate(stable_rate: float, canary_rate: float, *, runs: int, up_to: int) -> list[int | None]:
    """For each simulated canary (10 % of traffic), the canary requests at the rollback."""
    rng = random.Random(7)
    guard = CanaryGuard(min_requests=50)
    outcomes: list[int | None] = []
    for _ in range(runs):
        rolled_back_at = None
        n_c = f_c = n_s = f_s = 0
        look = 1
        while True:
            target = math.ceil(guard.min_requests * 1.25 ** (look - 1))
            if target > up_to:
                break
            grow = target - n_c
            f_c += binomial(rng, grow, canary_rate)
            f_s += binomial(rng, grow * 9, stable_rate)
            n_c, n_s = target, n_s + grow * 9
            assert look_index(n_c, guard.min_requests) == look
            verdict = decide(guard, figures(n_s, f_s), figures(n_c, f_c), look=look, running_s=0)
            if verdict is not None:
                assert verdict.outcome == "rollback"
                rolled_back_at = n_c
                break
            look += 1
        outcomes.append(rolled_back_at)
    return outcomes


def test_no_false_alarm_budget_is_overspent_on_equal_error_rates() -> None:
    # 400 canaries as good as stable (5 % errors), each watched up to 20,000 canary requests
    outcomes = simulate(0.05, 0.05, runs=400, up_to=20_000)
    false_alarms = sum(o is not None for o in outcomes)
    assert false_alarms <= 4  # alpha = 1 % over the whole canary (expected < 4)


def test_a_clear_regression_is_caught_early_and_a_small_one_eventually() -> None:
    broken = simulate(0.01, 1.0, runs=50, up_to=20_000)
    assert broken == [50] * 50  # every answer fails: the first look
    worse = simulate(0.02, 0.12, runs=100, up_to=20_000)  # +10 points, 2 allowed
    caught = sorted(o for o in worse if o is not None)
    assert len(caught) == 100
    assert caught[94] <= 500  # 95 % of them within 500 canary requests (measured: 466)


def test_wilson_intervals_behave_at_zero_and_one() -> None:
    low, high = wilson_interval(0, 50, 3.0)
    assert low == 0.0
    assert 0.1 < high < 0.2
    low, _ = wilson_interval(20, 20, 3.3)
    assert low > 0.6


@pytest.mark.parametrize(
    ("stable", "canary", "reason"),
    [
        (figures(900), figures(100, 100, parse=True), "parse failures"),
        (figures(900, 9), figures(100, 40), "errors"),
    ],
)
def test_rates_roll_back_with_the_figures_in_the_reason(
    stable: VersionFigures, canary: VersionFigures, reason: str
) -> None:
    verdict = decide(CanaryGuard(), stable, canary, look=1, running_s=5)
    assert verdict is not None
    assert verdict.outcome == "rollback"
    assert verdict.reason.startswith(reason)
    assert "allowed 2.0%" in verdict.reason


def test_nothing_is_decided_below_the_minimum_or_between_looks() -> None:
    bad = figures(40, 40, parse=True)
    assert decide(CanaryGuard(), figures(900), bad, look=1, running_s=5) is None  # < 50
    bad = figures(60, 60, parse=True)
    assert decide(CanaryGuard(), figures(900), bad, look=0, running_s=5) is None


def latency(requests: int, bucket: int) -> VersionFigures:
    buckets = [0] * 90
    buckets[bucket] = requests
    return VersionFigures(requests=requests, latency_buckets=tuple(buckets))


def test_p95_and_cost_roll_back_over_their_thresholds_at_a_look() -> None:
    slow = decide(CanaryGuard(), latency(500, 40), latency(60, 44), look=1, running_s=1)
    assert slow is not None
    assert slow.reason.startswith("p95 latency")  # 1.15^4 = x1.75 > x1.5
    assert "60/60 canary requests slower than" in slow.reason
    assert decide(CanaryGuard(), latency(500, 40), latency(60, 42), look=1, running_s=1) is None
    assert decide(CanaryGuard(), latency(500, 40), latency(60, 44), look=0, running_s=1) is None
    dear = decide(
        CanaryGuard(),
        VersionFigures(requests=500, tokens=500 * 100),
        VersionFigures(requests=60, tokens=60 * 300),
        look=1,
        running_s=1,
    )
    assert dear is not None
    assert dear.reason.startswith("tokens per request x3.00")


def latencies(rng: random.Random, requests: int, median_ms: float) -> VersionFigures:
    """``requests`` latencies spread like a loaded server's (log-normal, sigma 0.8)."""
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for _ in range(requests):
        ms = rng.lognormvariate(math.log(median_ms), 0.8)
        buckets[bisect.bisect_left(LATENCY_BOUNDS_MS, ms)] += 1
    return VersionFigures(requests=requests, latency_buckets=tuple(buckets))


def latency_verdicts(slowdown: float, *, runs: int) -> list[int | None]:
    """Canary requests at the rollback of 50 % canaries ``slowdown`` times slower (or None)."""
    rng = random.Random(11)
    guard = CanaryGuard()
    found: list[int | None] = []
    for _ in range(runs):
        stable = canary = VersionFigures()
        at = None
        for look in range(1, 30):
            target = math.ceil(guard.min_requests * 1.25 ** (look - 1))
            if target > 3000:
                break
            grow = target - canary.requests
            stable = stable + latencies(rng, grow, 30.0)
            canary = canary + latencies(rng, grow, 30.0 * slowdown)
            if decide(guard, stable, canary, look=look, running_s=0) is not None:
                at = canary.requests
                break
        found.append(at)
    return found


def test_latency_has_no_false_alarm_and_catches_a_slower_version() -> None:
    same = latency_verdicts(1.0, runs=100)
    assert sum(at is not None for at in same) <= 1  # measured: 0 of 100
    doubled = sorted(at for at in latency_verdicts(2.0, runs=50) if at is not None)
    assert len(doubled) == 50  # every run that was twice as slow
    assert doubled[24] <= 600  # measured: half within 466 canary requests, all within 2,221


def test_auto_promote_waits_for_both_thresholds() -> None:
    guard = CanaryGuard(promote_after_requests=100, promote_after_s=60)
    assert decide(guard, figures(900), figures(120), look=2, running_s=30) is None
    verdict = decide(guard, figures(900), figures(120), look=2, running_s=61)
    assert verdict is not None
    assert verdict.outcome == "promote"


@pytest.mark.parametrize(
    "settings",
    [{"max_p95_ratio": 0.9}, {"min_requests": 0}, {"alpha": 0.7}, {"max_error_rate_increase": 1}],
)
def test_bad_thresholds_are_refused_by_name(settings: dict[str, float]) -> None:
    with pytest.raises(ProgramError, match=next(iter(settings))):
        CanaryGuard.from_dict(settings)


def test_unknown_guard_settings_are_refused() -> None:
    with pytest.raises(ProgramError, match="unknown settings"):
        CanaryGuard.from_dict({"min_request": 10})


def canary(weight: float, canary_id: str = "7") -> Canary:
    return Canary(
        id=canary_id,
        program_id="qa",
        version="1.1.0",
        stable_version="1.0.0",
        weight=weight,
        sticky="request",
        guard=None,
        actor=None,
        reason=None,
        started_at="",
    )


@pytest.mark.parametrize("weight", [0.01, 0.1, 0.5])
def test_the_hash_split_gives_the_weight_and_a_new_canary_draws_again(weight: float) -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    first = [on_canary(canary(weight), k) for k in keys]
    assert abs(sum(first) / len(keys) - weight) < 0.01
    assert first == [on_canary(canary(weight), k) for k in keys]  # no coin: the same again
    second = [on_canary(canary(weight, "8"), k) for k in keys]
    assert first != second


def test_the_in_memory_book_keeps_one_running_canary_per_program() -> None:
    book = LocalCanaryBook()
    started = book.start_canary(canary(0.1))
    with pytest.raises(ProgramError, match="already has a running canary"):
        book.start_canary(canary(0.2))
    assert book.active_canaries() == {"qa": started}
    ended = book.end_canary("qa", outcome="rollback", actor="ana", reason="slow")
    assert (ended.outcome, ended.ended_by, ended.end_reason) == ("rollback", "ana", "slow")
    assert ended.ended_at is not None
    with pytest.raises(ProgramError, match="no running canary"):
        book.end_canary("qa", outcome="rollback", actor=None, reason=None)
    assert book.canaries("qa") == [ended]
    assert book.active_canaries() == {}


def test_a_clear_fall_of_the_feedback_score_rolls_back_with_the_scores_in_the_reason() -> None:
    guard = CanaryGuard(max_score_drop=0.2, min_scored_feedback=10)
    good, bad = ScoreFigures(12, 0.9), ScoreFigures(10, 0.3)
    verdict = decide(
        guard, figures(5), figures(5), look=0, running_s=1, stable_scores=good, canary_scores=bad
    )
    assert verdict is not None
    assert verdict.outcome == "rollback"
    assert "feedback mean score 0.3 over 10" in verdict.reason
    assert "stable 0.9 over 12" in verdict.reason


@pytest.mark.parametrize(
    ("guard", "stable", "canary"),
    [
        (CanaryGuard(), ScoreFigures(50, 0.9), ScoreFigures(50, 0.1)),  # no threshold set
        (CanaryGuard(max_score_drop=0.2, min_scored_feedback=10), None, None),  # no feedback
        (  # too few scored on one side
            CanaryGuard(max_score_drop=0.2, min_scored_feedback=10),
            ScoreFigures(50, 0.9),
            ScoreFigures(9, 0.1),
        ),
        (  # within the allowed drop
            CanaryGuard(max_score_drop=0.2, min_scored_feedback=10),
            ScoreFigures(50, 0.9),
            ScoreFigures(50, 0.75),
        ),
    ],
)
def test_without_enough_feedback_or_a_breach_the_guard_decides_as_before(
    guard: CanaryGuard, stable: ScoreFigures | None, canary: ScoreFigures | None
) -> None:
    for look, requests, failures in ((0, 5, 0), (1, 400, 0), (1, 400, 200)):
        before = decide(guard, figures(400), figures(requests, failures), look=look, running_s=1)
        now = decide(
            guard,
            figures(400),
            figures(requests, failures),
            look=look,
            running_s=1,
            stable_scores=stable,
            canary_scores=canary,
        )
        assert now == before
    assert decide(guard, figures(400), figures(400, 200), look=1, running_s=1) is not None


@pytest.mark.parametrize(
    "settings",
    [{"max_score_drop": -0.1}, {"min_scored_feedback": 0}, {"score_kind": "robot"}],
)
def test_bad_feedback_thresholds_are_refused_by_name(settings: dict[str, object]) -> None:
    with pytest.raises(ProgramError, match=next(iter(settings))):
        CanaryGuard.from_dict(settings)
