"""End to end: F, H (each also with an OpenTelemetry SDK; F also with the production profile),
H+freeze, D and R under one load.

    python benchmarks/e2e/throughput.py [--quick] [--apps F,H] [--latencies 0] [--concurrencies 64]

One provider process (its latency switched between points), the apps each under uvicorn
in a process of its own, and the load generator in a third process per point. For every
(latency, concurrency) point the apps are loaded one after another, and in the next round in
the reverse order, so drift on a noisy machine hits them alike; each app's rounds are pooled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs
from e2e.loadgen import percentile

APPS = ("F", "F_otel", "F_prod", "H", "H_otel", "H_freeze", "D", "R")
LATENCIES_MS = (0, 200)
CONCURRENCIES = (1, 64, 256)


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how often each point runs."""

    window_s: float
    warmup_s: float
    rounds: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(1.5, 0.5, 1) if quick else cls(4.0, 1.5, 2)


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of the same app and point."""
    latencies = [x for run in runs for x in run["latencies_ms"]]
    completed = sum(run["completed"] for run in runs)
    window = sum(run["window_s"] for run in runs)
    cpu = sum(run["server_cpu_s"] or 0.0 for run in runs)
    return {
        "completed": completed,
        "errors": sum(run["errors"] for run in runs),
        # answered requests, each counted for the share of its time inside the window (loadgen's
        # ``throughput_credit``); the plain count over the window is ``throughput_count``
        "throughput": (
            sum(run["throughput_credit"] * run["window_s"] for run in runs) / window
            if window
            else 0.0
        ),
        "throughput_count": completed / window if window else 0.0,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "cpu_ms_per_request": cpu / completed * 1000 if completed else float("nan"),
        "rounds": [round(run["throughput_credit"], 1) for run in runs],
    }


def run_matrix(
    *,
    quick: bool = False,
    apps: tuple[str, ...] = APPS,
    latencies_ms: tuple[int, ...] = LATENCIES_MS,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
) -> dict[str, Any]:
    """Run every point; returns ``{"plan", "points": [{latency_ms, concurrency, apps}]}``."""
    plan = Plan.for_mode(quick)
    points: list[dict[str, Any]] = []
    started = time.perf_counter()
    with _procs.provider() as provider, contextlib.ExitStack() as stack:
        running = {name: stack.enter_context(_procs.app(name, provider.base_url)) for name in apps}
        for latency in latencies_ms:
            provider.set_latency(latency)
            for concurrency in concurrencies:
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in apps}
                for round_index in range(plan.rounds):
                    order = apps if round_index % 2 == 0 else tuple(reversed(apps))
                    for name in order:
                        app = running[name]
                        runs[name].append(
                            _procs.load(
                                app.port,
                                concurrency=concurrency,
                                duration_s=plan.window_s,
                                warmup_s=plan.warmup_s,
                                server_pid=app.pid,
                                raw=True,
                            )
                        )
                point = {
                    "latency_ms": latency,
                    "concurrency": concurrency,
                    "apps": {name: pool(results) for name, results in runs.items()},
                }
                points.append(point)
                print(_point_line(point), file=sys.stderr, flush=True)
    return {
        "plan": {"window_s": plan.window_s, "warmup_s": plan.warmup_s, "rounds": plan.rounds},
        "points": points,
        "elapsed_s": time.perf_counter() - started,
    }


def _point_line(point: dict[str, Any]) -> str:
    parts = [f"latency {point['latency_ms']:>3} ms  c={point['concurrency']:<3}"]
    for name, result in point["apps"].items():
        parts.append(
            f"{name} {result['throughput']:7.1f}/s p99 {result['p99_ms']:7.1f} ms "
            f"cpu {result['cpu_ms_per_request']:5.2f} ms"
        )
        if result["errors"]:
            parts.append(f"({result['errors']} errors)")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--latencies", default=",".join(map(str, LATENCIES_MS)))
    parser.add_argument("--concurrencies", default=",".join(map(str, CONCURRENCIES)))
    args = parser.parse_args()
    result = run_matrix(
        quick=args.quick,
        apps=tuple(args.apps.split(",")),
        latencies_ms=tuple(int(x) for x in args.latencies.split(",")),
        concurrencies=tuple(int(x) for x in args.concurrencies.split(",")),
    )
    json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
