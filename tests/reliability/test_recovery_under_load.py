"""A breaker recovers while traffic keeps coming: a real app, a real provider, real load.

The guarded benchmark app (``benchmarks/e2e/apps/g_app.py``: lifespan helper, program
endpoint, error handlers, middleware, health router) runs under uvicorn in its own process,
the local provider in another, with an OpenTelemetry SDK exporting (the case where refusals
used to cost as much as served requests and starved the half-open probes, so the breaker
never closed at c=200); closed-loop clients on 127.0.0.1 run through a 1 s provider outage
(reset timeout 2 s, request deadline 2 s). Bounded: about 12 s of load per run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from e2e import reliability  # noqa: E402 -- benchmarks/ is not a package


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("concurrency", [50, 200])
def test_the_breaker_closes_under_continuing_load_once_the_provider_is_back(
    concurrency: int,
) -> None:
    # 1 s of outage, not the benchmark's 0.3 s: at the 150-190 requests/s this worker serves
    # here, 0.3 s fails 45-57 of the breaker's last 100 calls, which straddles its 50 %
    # threshold, so whether the breaker opened at all depended on the machine's speed (a CI
    # run saw it stay closed: 3 of 1,548 requests failed). This test is about the recovery.
    run = reliability.recovery(concurrency=concurrency, quick=True, outage_s=1.0)
    assert run["opened_after_outage_s"] is not None, run  # the outage was seen
    assert run["opened_after_outage_s"] < 1.0, run
    assert run["closed_after_recovery_s"] is not None, run  # never stuck half-open
    assert run["closed_after_recovery_s"] <= run["close_bound_s"], run
    assert run["requests_after_settling"] > 100, run  # traffic did keep flowing
    assert run["refused_share_after_settling"] == 0.0, run
    assert set(run["statuses"]) <= {"200", "502", "503", "504"}, run  # nothing unhandled
