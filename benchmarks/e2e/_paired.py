"""Paired comparison of two paths loaded in the same rounds: per-round differences, their
median, interquartile range and a bootstrap confidence interval of the median.

Rounds on a shared machine differ in speed by far more than the effects measured here (one
path's rounds ran 400-556 req/s within one run), and a p99 pooled over rounds, or the worst
round's, follows whichever round was slowest. Each round loads both paths back to back, so
the difference within a round has most of that drift taken out; the median of those
differences is robust to the odd round a neighbour's burst spoiled, and the spread of the
differences says how far one run can be trusted.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from e2e.loadgen import percentile

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.90


def median_ci(values: Sequence[float], *, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap ``CONFIDENCE`` interval of the median of ``values`` (rounds
    resampled with replacement; seeded, so a run's figures are reproducible from its data)."""
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP_SAMPLES)
    )
    tail = (1 - CONFIDENCE) / 2
    return medians[int(tail * BOOTSTRAP_SAMPLES)], medians[int((1 - tail) * BOOTSTRAP_SAMPLES) - 1]


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Median, interquartile range, bootstrap interval of the median, and range."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    low, high = median_ci(values)
    return {
        "median": round(statistics.median(values), digits),
        "iqr": [round(q1, digits), round(q3, digits)],
        f"ci{round(CONFIDENCE * 100)}": [round(low, digits), round(high, digits)],
        "range": [round(min(values), digits), round(max(values), digits)],
    }


def compare(
    rounds: Sequence[dict[str, dict[str, Any]]],
    on: str,
    off: str,
    allowance: Callable[[float], float],
) -> dict[str, Any]:
    """``on`` against ``off``, round by round: the p99 difference (ms), the p99 ratio, the
    difference less the round's ``allowance(p99 off)`` (> 0: over it), and the p50,
    throughput and server-CPU-per-request ratios; each as a :func:`summary`."""
    delta, ratio, over, p50, throughput, cpu = [], [], [], [], [], []
    for loads in rounds:
        a, b = loads[on], loads[off]
        delta.append(a["p99_ms"] - b["p99_ms"])
        ratio.append(a["p99_ms"] / b["p99_ms"])
        over.append(a["p99_ms"] - b["p99_ms"] - allowance(b["p99_ms"]))
        p50.append(a["p50_ms"] / b["p50_ms"])
        throughput.append(a["throughput"] / b["throughput"])
        cpu.append(cpu_ms_per_request(a) / cpu_ms_per_request(b))
    return {
        "p99_delta_ms": summary(delta),
        "p99_ratio": summary(ratio, 3),
        "p99_over_allowance_ms": summary(over),
        "p50_ratio": summary(p50, 3),
        "throughput_ratio": summary(throughput, 3),
        "cpu_ratio": summary(cpu, 3),
    }


def foreign_cpu(load: dict[str, Any]) -> float:
    """Cores' worth of CPU that processes other than the server, its helpers and the load
    generator used during a load's window (another benchmark, a test run, the system)."""
    ours = load["server_cpu_s"] + load["loadgen_cpu_s"] + load["helpers_cpu_s"]
    return max(0.0, load["machine_cpu_s"] - ours) / load["window_s"]


def cpu_ms_per_request(load: dict[str, Any]) -> float:
    """Server CPU per completed request in a load (ms)."""
    return float(load["server_cpu_s"]) / load["completed"] * 1000


def pooled(rounds: Sequence[dict[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    """One path over all rounds: throughput, p50/p99 of every latency, server CPU per request,
    and each round's throughput and p99 (the spread a reader should see)."""
    loads = [r[name] for r in rounds]
    latencies = [x for load in loads for x in load["latencies_ms"]]
    completed = sum(load["completed"] for load in loads)
    return {
        "throughput": round(completed / sum(load["window_s"] for load in loads), 1),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "cpu_ms_per_request": round(
            sum(load["server_cpu_s"] for load in loads) / completed * 1000, 3
        ),
        "round_throughput": [round(load["throughput"], 1) for load in loads],
        "round_p99_ms": [round(load["p99_ms"], 1) for load in loads],
    }
