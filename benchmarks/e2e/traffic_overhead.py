"""What traffic capture at 100 % costs a request: p99 with capture against without, one app;
and with capture plus a judge scoring 10 % of it in the background.

    python benchmarks/e2e/traffic_overhead.py [--quick]

One provider process (no latency: the framework's own cost is all there is to see), app T
(``apps/t_app.py``: the same program under three ids: no capture, capture of every request
to SQLite, and capture plus an online evaluation by a judge program on a model of the model
manager for 10 % of the captures) under uvicorn in a process of its own, and the load
generator in a third. The paths are loaded one after the other in ABBA order, so drift on a
noisy machine hits all alike; after each load of the judged path the benchmark waits until
its judgements are done, so none runs during another path's load. Each path's rounds are
pooled. Prints JSON: each path's throughput, p50/p99 and server CPU per request;
``p99_delta_ms`` / ``p99_ratio`` of capture against off (target: within 2 % or 1 ms, issue
31), and the same for the judged path (``judge_*``), with how many captures the judge scored
and skipped (``judge_skipped_busy``: because the loop was never idle within its delay; the
judge scores in lulls and after each load, paced). These are closed-loop figures at
saturation (c=64): any CPU a request or a background task adds shows in latency as about
c x that CPU. A second, open-loop set (``open_loop_*``) sends at a fixed rate, 60 % of the
slowest path's saturated throughput, over the same 64 connections, latency counted from
each scheduled send: the p99 a server with headroom sees. Last, ``capture_cpu``
(``capture_cpu.py``, in-process): the CPU one capture costs on the event loop and on the
writer thread while a loop is kept busy, and ``capture_cpu_share``: that total against the
CPU of a request with capture off (at saturation, p99 grows by about this share; the
issue's 2 % allows ~40 us at ~2 ms a request).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs, capture_cpu

BODY = '{{"input": "Question {n}: what is {n} plus {n}?", "model_id": "gpt-4o-mini"}}'
PATHS = {
    "capture_off": ("/programs/predictor", BODY),
    "capture_100": ("/programs/captured", BODY),
    "capture_100_judge_10": ("/programs/judged", BODY),
}
CONCURRENCY = 64
OPEN_LOOP_SHARE = 0.6  # of the slowest path's saturated throughput


def _allowance(off: float) -> float:
    return max(0.02 * off, 1.0)


def _compare(pooled: dict[str, dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    """The p99 of capture, and of capture with a judge, against capture off."""
    off = pooled["capture_off"]["p99_ms"]
    on, judge = pooled["capture_100"]["p99_ms"], pooled["capture_100_judge_10"]["p99_ms"]
    return {
        f"{prefix}p99_delta_ms": round(on - off, 2),
        f"{prefix}p99_ratio": round(on / off, 3) if off else None,
        f"{prefix}within_target": on - off <= _allowance(off),
        # > 0: by how much the p99 missed the allowance (2 % of the p99 off, or 1 ms)
        f"{prefix}p99_over_allowance_ms": round(on - off - _allowance(off), 2),
        f"{prefix}judge_p99_delta_ms": round(judge - off, 2),
        f"{prefix}judge_p99_ratio": round(judge / off, 3) if off else None,
        f"{prefix}judge_within_target": judge - off <= _allowance(off),
        f"{prefix}judge_p99_over_allowance_ms": round(judge - off - _allowance(off), 2),
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Load the paths in ABBA rounds, saturated then open-loop; the pooled results and the
    p99 comparisons."""
    judged: dict[str, int] = {"scored": 0, "skipped": 0, "skipped_busy": 0}
    during: dict[str, int] = {"saturated": 0, "open_loop": 0}
    phase = ["saturated"]

    def after(name: str) -> None:
        if name != "capture_100_judge_10":
            return
        url = f"http://127.0.0.1:{app.port}/bench/judged"
        scored_before = judged["scored"]
        with urllib.request.urlopen(url, timeout=300) as response:
            judged.update(json.load(response))
        during[phase[0]] += judged.pop("scored_during_load") - scored_before

    with _procs.provider() as provider, _procs.serve_module("T", "t_app", provider.base_url) as app:
        pooled = _procs.load_paths_abba(
            app, PATHS, concurrency=CONCURRENCY, quick=quick, after=after
        )
        phase[0] = "open_loop"
        rate = round(OPEN_LOOP_SHARE * min(p["throughput"] for p in pooled.values()), 1)
        paced = _procs.load_paths_abba(
            app, PATHS, concurrency=CONCURRENCY, quick=quick, after=after, rate=rate
        )
    saturated = _compare(pooled)
    per_capture = capture_cpu.measure(quick=quick)
    off_us = pooled["capture_off"]["cpu_ms_per_request"] * 1000
    return {
        "concurrency": CONCURRENCY,
        "paths": pooled,
        **{k: v for k, v in saturated.items() if not k.startswith("judge_")},
        "judge_sample_rate": 0.1,
        "judge_scored": judged["scored"],
        "judge_skipped": judged["skipped"],
        "judge_skipped_busy": judged["skipped_busy"],
        "judge_scored_during_load": during["saturated"],
        **{k: v for k, v in saturated.items() if k.startswith("judge_")},
        "open_loop_rate": rate,
        "open_loop_paths": paced,
        "open_loop_judge_scored_during_load": during["open_loop"],
        **_compare(paced, "open_loop_"),
        "capture_cpu": per_capture,
        "capture_cpu_share": round(per_capture["total_us_per_capture"] / off_us, 4),
        "capture_loop_cpu_share": round(per_capture["loop_us_per_capture"] / off_us, 4),
    }


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
