"""What traffic capture at 100 % costs a request: p99 with capture against without, one app;
and with capture plus a judge scoring 10 % of it in the background.

    python benchmarks/e2e/traffic_overhead.py [--quick]

One provider process (no latency: the framework's own cost is all there is to see), app T
(``apps/t_app.py``: the same program under three ids: no capture, capture of every request
to SQLite, and capture plus an online evaluation by a judge program on a model of the model
manager for 10 % of the captures) under uvicorn in a process of its own, and the load
generator in a third, kept running with its 64 connections open (``loadgen.py --serve``).

The method: rounds of short loads, each path once per round (a warm-up that drains the
previous path's requests and fills the queue again, then a one-second window), the order
rotated from round to round and reversed every other cycle, so each path holds each place
and follows each other path equally often. On this shared 2-core machine the server's speed
moves by ~10-20 % from one second to the next (consecutive one-second loads of the same
path differ by a median 8-12 % in throughput; the two halves of one load by 16 % (sd)), far
more than the 2 % judged, and a p99 pooled over rounds, or the worst round's, follows
whichever round was slowest. Each round gives a paired difference, capture minus off (p99
ms, p99 ratio, p50/throughput/CPU ratios), and the verdict is on the median of those
differences over the rounds, with its interquartile range and a 90 % bootstrap interval of
the median (``_paired.py``): the median shrugs off the odd round a burst spoiled, and the
interval says how far one run can be trusted. The rule is the issue's, round by round:
capture's p99 within 2 % of off's (or 1 ms); ``p99_over_allowance_ms`` is the median of
(capture - off - allowance), met when <= 0. After each load of the judged path the
benchmark waits until its judgements are done, so none runs during another path's load.
How busy the rest of the machine was is measured too (``other_processes_cores``: CPU used
during a window by processes other than the app, the provider and the load generator), and
the p99 ratio over the quiet rounds alone is printed for reference (not the verdict).

What one run resolves: an A/A comparison (capture off against itself in the same rounds)
gave a median p99 ratio of 0.90-1.04 and 0.93-1.17 (90 % intervals, two runs of 20-24
rounds), the p50 ratio no tighter: saturated, one run tells a ~10 % difference, not a 2 %
one. There (closed loop, c=64) any CPU a request or a background task adds shows in latency
as about c x that CPU, so ``capture_cpu_share`` below is the finer guide to the 2 %.

The open loop sends at a fixed rate, 30 % of capture off's saturated throughput, over the same
64 connections, latency counted from each scheduled send: the p99 a server with headroom sees.
At 60 % (the earlier setting) this machine's capacity dips below the rate for a fraction of a
second every few seconds and the queue that builds sets the p99: per-round p99s of 4-160 ms
around a median of 7-18 ms, A/A differences with an interquartile range of -11 to +7 ms (-5 to
+2 ms in a quieter hour), and merging rounds into longer windows made it worse (one dip per
window sets it); at 30 % the per-round p99 is 6-17 ms around 8 ms and the A/A median difference
within -0.7 to +1.4 ms (90 %), so the 1 ms allowance can be judged. Each path's loads pooled
over the rounds (p50, p99 of every latency, throughput, server CPU per request, and each
round's throughput and p99) are printed for reference, as is ``pooled_p99_delta_ms``. The
judge's counts: captures scored, skipped (``judge_skipped_busy``: the loop was never idle
within its delay; the judge scores in lulls and after each load, paced). Last, ``capture_cpu``
(``capture_cpu.py``, in-process): the CPU one capture costs on the event loop and on the writer
thread while a loop is kept busy, and ``capture_cpu_share``: that total against the CPU of a
request with capture off (at saturation, p99 grows by about this share); and ``judge_cpu``
(``capture_cpu.measure_judge``): the loop CPU per request the online evaluation adds while the
loop is busy, timed where that work runs.

The saturated verdicts are those shares, in % of the CPU per request with capture off
(``capture_cpu_pct``: loop and writer thread, every core of this machine being busy;
``judge_loop_cpu_pct``: what the judge adds), each against the 2 % allowance. Saturated, the
p99 follows the CPU per request (about c x it in this closed loop: the median latency is 64 x
the CPU per request within a few %), which the end-to-end rounds resolve to ~10 % and the
in-process clocks to ~0.1 us; the rounds' p99 figures, with their 90 % intervals, are printed
for reference (the last two full runs read capture's saturated p99 at -2.19 and +3.60 ms over
its allowance, earlier ones -5 to +14 ms, while the paired CPU ratio read 1.057 and 1.044).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _paired, _procs, capture_cpu

BODY = '{{"input": "Question {n}: what is {n} plus {n}?", "model_id": "gpt-4o-mini"}}'
PATHS = {
    "capture_off": ("/programs/predictor", BODY),
    "capture_100": ("/programs/captured", BODY),
    "capture_100_judge_10": ("/programs/judged", BODY),
}
CONCURRENCY = 64
OPEN_LOOP_SHARE = 0.3  # of capture off's saturated throughput (60 %: see above)
# rounds saturated and open-loop (multiples of 6: each path in each place, after each other
# path, equally often), window and warm-up seconds of each load. Saturated, the judge's
# drain makes a round ~13 s, and 18 rounds resolve the p99 ratio only to about +-8 %
# (12: +-10 %), never the 2 %; open-loop rounds are ~8 s and resolve the 1 ms allowance: the
# rounds go there.
FULL = (12, 18, 1.0, 0.4)
QUICK = (6, 6, 0.6, 0.3)
QUIET_CORES = 0.1  # a round in which no other process used more than this is "quiet"


def _allowance(off: float) -> float:
    return max(0.02 * off, 1.0)


def _figures(phase: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The verdict figures of a phase: the paired medians, their spread and the pooled
    difference for reference."""
    out: dict[str, Any] = {}
    for name, key in (("capture_100", ""), ("capture_100_judge_10", "judge_")):
        paired = phase["paired"][name]
        over = paired["p99_over_allowance_ms"]
        pooled = phase["paths"][name]["p99_ms"] - phase["paths"]["capture_off"]["p99_ms"]
        out |= {
            f"{prefix}{key}p99_delta_ms": paired["p99_delta_ms"]["median"],
            f"{prefix}{key}p99_delta_iqr_ms": paired["p99_delta_ms"]["iqr"],
            f"{prefix}{key}p99_ratio": paired["p99_ratio"]["median"],
            f"{prefix}{key}p99_ratio_iqr": paired["p99_ratio"]["iqr"],
            f"{prefix}{key}p99_over_allowance_ms": over["median"],
            f"{prefix}{key}p99_over_allowance_ci90_low_ms": over["ci90"][0],
            f"{prefix}{key}p99_over_allowance_ci90_high_ms": over["ci90"][1],
            f"{prefix}{key}within_target": over["median"] <= 0,
            # the server's CPU per request and throughput, same pairing: finer than the p99
            f"{prefix}{key}cpu_ratio": paired["cpu_ratio"]["median"],
            f"{prefix}{key}cpu_ratio_ci90": paired["cpu_ratio"]["ci90"],
            f"{prefix}{key}throughput_ratio": paired["throughput_ratio"]["median"],
            f"{prefix}{key}pooled_p99_delta_ms": round(pooled, 2),
        }
    return out


def _phase(rounds: list[dict[str, dict[str, Any]]], elapsed_s: float) -> dict[str, Any]:
    """Each path pooled over the rounds, and capture (with and without a judge) against capture
    off, round by round; and how busy the rest of the machine was."""
    foreign = [max(_paired.foreign_cpu(load) for load in r.values()) for r in rounds]
    quiet = [r for r, cores in zip(rounds, foreign, strict=True) if cores < QUIET_CORES]
    compared = ("capture_100", "capture_100_judge_10")
    return {
        "rounds": len(rounds),
        "elapsed_s": round(elapsed_s, 1),
        "paths": {name: _paired.pooled(rounds, name) for name in PATHS},
        "paired": {
            name: _paired.compare(rounds, name, "capture_off", _allowance) for name in compared
        },
        # a round's most CPU used by other processes during one of its loads (cores)
        "other_processes_cores": _paired.summary(foreign),
        "quiet_rounds": len(quiet),
        # for reference: the same over the rounds nothing else ran in (not the verdict)
        "paired_quiet_rounds": {
            name: _paired.compare(quiet, name, "capture_off", _allowance)["p99_ratio"]
            for name in compared
        }
        if len(quiet) >= 4
        else None,
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Load the paths in paired rounds, saturated then open-loop; the paired comparisons and
    the pooled results."""
    started = time.perf_counter()
    rounds, open_rounds, window_s, warmup_s = QUICK if quick else FULL
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

    with (
        _procs.provider() as provider,
        _procs.serve_module("T", "t_app", provider.base_url) as app,
        _procs.load_generator(
            app.port,
            concurrency=CONCURRENCY,
            server_pid=app.pid,
            helper_pids=(provider.process.pid,),
        ) as generator,
    ):
        path, body = PATHS["capture_off"]
        generator.load(path=path, body=body, duration=2.0, warmup=1.0)  # a warm server
        load = {"window_s": window_s, "warmup_s": warmup_s, "after": after}
        began = time.perf_counter()
        saturated = _phase(
            _procs.load_rounds(generator, PATHS, rounds=rounds, **load),
            time.perf_counter() - began,
        )
        phase[0] = "open_loop"
        rate = round(OPEN_LOOP_SHARE * saturated["paths"]["capture_off"]["throughput"], 1)
        began = time.perf_counter()
        paced = _phase(
            _procs.load_rounds(generator, PATHS, rounds=open_rounds, rate=rate, **load),
            time.perf_counter() - began,
        )
    per_capture = capture_cpu.measure(quick=quick)
    judge_cpu = capture_cpu.measure_judge(quick=quick)
    off_us = saturated["paths"]["capture_off"]["cpu_ms_per_request"] * 1000
    return {
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "open_loop_rounds": open_rounds,
        "window_s": window_s,
        "warmup_s": warmup_s,
        "saturated": saturated,
        **_figures(saturated),
        "judge_sample_rate": 0.1,
        "judge_scored": judged["scored"],
        "judge_skipped": judged["skipped"],
        "judge_skipped_busy": judged["skipped_busy"],
        "judge_scored_during_load": during["saturated"],
        "open_loop_rate": rate,
        "open_loop": paced,
        **_figures(paced, "open_loop_"),
        "open_loop_judge_scored_during_load": during["open_loop"],
        "capture_cpu": per_capture,
        "capture_cpu_share": round(per_capture["total_us_per_capture"] / off_us, 4),
        "capture_loop_cpu_share": round(per_capture["loop_us_per_capture"] / off_us, 4),
        # the saturated verdicts, in % of a request's CPU with capture off
        "capture_cpu_pct": round(per_capture["total_us_per_capture"] / off_us * 100, 2),
        "judge_cpu": judge_cpu,
        "judge_loop_cpu_pct": round(judge_cpu["judge_loop_us_per_request"] / off_us * 100, 3),
        "judge_cpu_scored_during_load": judge_cpu["scored_during_load"],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
