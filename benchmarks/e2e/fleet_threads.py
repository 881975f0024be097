"""The fleet example's CPU per served request by thread, with Redis against without.

    python benchmarks/e2e/fleet_threads.py [--quick]

Where ``fleet.py --throughput``'s extra CPU per request with Redis goes. Both apps of that
benchmark (2 workers each, c=64, provider latency 0, limits that never refuse) run side by
side, loaded in turn in paired rounds (the order reversed every round); around each window
every thread of every worker is read from ``/proc``: CPU time (``schedstat``: nanoseconds,
kernel time included) and voluntary / involuntary context switches. Threads are named by
``py-spy dump`` once the workers are warm (the OS sees every thread as ``python``):
``MainThread`` (the event loop), ``llm-server-fleet-sync`` / ``-writer`` (the fleet's threads)
and the rest (the executor's threads, uvicorn's ``always_pong``) by the name Python gave them,
without their number.

Reports, per thread, the median over the rounds of each app's microseconds of CPU per served
request, the median of the rounds' differences (with Redis - without) and the context
switches a second (both workers). The loop's own fleet work shows in ``MainThread``; a
background thread's cost in its own line and, through the thread switches it causes, in
the others'.

What it read (2026-12-07, this shared 2-core VM, 10 rounds, ~1,200-1,500 us of CPU per
request; two runs): the sync thread 8.1 and 11.7 us per request (~10 turns a second, ~60
voluntary switches a second per worker: ~6 sleeps a turn, each ~50-100 us of CPU in this VM;
a turn's own Python work is ~0.1 ms beside an idle loop, ~0.6 ms beside a busy one); the
executor's threads (``uvloop``: DSPy prices each answer in a worker thread) +5.6 and +5.3
us, their voluntary switches a second +25 and +70 %; the event loop +8 and -12, within the
rounds' noise (its own fleet work is ~1 % of its GIL-held samples in ``py-spy --gil``: the
limiter's take 0.9 %, of which the lease's Redis round trip 0.4 %, the breaker 0.2 %). The
CPU ratio of the rounds (with / without): 1.02 and 1.005.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs
from e2e._fleet_apps import (
    BODY,
    CONCURRENCY,
    PATH,
    app_env,
    deal,
    fleet,
    redis_server,
    wait_ready,
)

PY_SPY = Path(sys.executable).parent / "py-spy"


def _workers(app: Any) -> list[int]:
    import psutil

    children = psutil.Process(app.process.pid).children(recursive=True)
    return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]


def _names(pid: int) -> dict[str, str]:
    """Thread id -> Python's name for it, without a trailing number (``py-spy dump``)."""
    command = [str(PY_SPY), "dump", "-p", str(pid)]
    dump = subprocess.run(command, check=False, capture_output=True, text=True)
    found = re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', dump.stdout, re.MULTILINE)
    # "uvloop_3" -> "uvloop", "Thread-1 (always_pong)" -> "always_pong"
    return {tid: re.sub(r"[-_]\d+$|^Thread-\d+ \((\w+)\)$", r"\1", name) for tid, name in found}


def _switches(status: str, kind: str) -> int:
    found = re.search(rf"^{kind}:\s+(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _threads(pid: int, names: dict[str, str]) -> dict[str, list[float]]:
    """Per thread name: CPU seconds, voluntary and involuntary context switches so far."""
    out: dict[str, list[float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        try:
            cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
            status = (task / "status").read_text()
        except FileNotFoundError:  # ended meanwhile
            continue
        switches = [
            _switches(status, f"{kind}_ctxt_switches") for kind in ("voluntary", "nonvoluntary")
        ]
        name = "MainThread" if tid == str(pid) else names.get(tid, "unnamed")
        total = out.setdefault(name, [0.0, 0.0, 0.0])
        for index, value in enumerate((cpu, *switches)):
            total[index] += value
    return out


def measure(*, quick: bool) -> dict[str, Any]:
    rounds, window_s = (4, 3.0) if quick else (10, 4.0)
    per_round: list[dict[str, dict[str, list[float]]]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as url,
        _procs.provider() as provider,
        contextlib.ExitStack() as stack,
    ):
        envs = {
            "redis": app_env("redis", url, "t"),
            "local": app_env("local", url, "t"),
        }
        apps = {
            name: stack.enter_context(
                fleet(Path(tmp), provider.base_url, workers=2, env=env, ready=False)
            )
            for name, env in envs.items()
        }
        wait_ready(list(apps.values()), workers=2)
        generators = {
            name: stack.enter_context(
                _procs.load_generator(app.port, concurrency=CONCURRENCY, server_pid=app.process.pid)
            )
            for name, app in apps.items()
        }
        for generator in generators.values():  # warm workers, connections, fleet leases
            generator.load(path=PATH, body=BODY, duration=2.0, warmup=1.0)
        names = {pid: _names(pid) for app in apps.values() for pid in _workers(app)}
        for index in range(rounds):
            loads: dict[str, dict[str, list[float]]] = {}
            for name in list(apps) if index % 2 == 0 else list(reversed(apps)):
                deal(generators[name], apps[name])
                pids = _workers(apps[name])
                before = [_threads(pid, names.get(pid, {})) for pid in pids]
                load = generators[name].load(path=PATH, body=BODY, duration=window_s, warmup=0.0)
                after = [_threads(pid, names.get(pid, {})) for pid in pids]
                served = max(1, int(load["completed"]))
                figures: dict[str, list[float]] = {}
                for old, new in zip(before, after, strict=True):
                    for thread, values in new.items():
                        start = old.get(thread, [0.0, 0.0, 0.0])
                        total = figures.setdefault(thread, [0.0, 0.0, 0.0])
                        total[0] += (values[0] - start[0]) / served * 1e6
                        total[1] += (values[1] - start[1]) / window_s
                        total[2] += (values[2] - start[2]) / window_s
                loads[name] = figures
            per_round.append(loads)
    threads = sorted({t for r in per_round for load in r.values() for t in load})
    report: dict[str, Any] = {"rounds": rounds, "window_s": window_s, "threads": {}}
    for thread in threads:

        def of(app: str, at: int, r: dict[str, dict[str, list[float]]], t: str = thread) -> float:
            return r[app].get(t, [0.0, 0.0, 0.0])[at]

        report["threads"][thread] = {
            "us_per_request": {
                app: round(statistics.median(of(app, 0, r) for r in per_round), 1) for app in apps
            },
            "us_per_request_difference": round(
                statistics.median(of("redis", 0, r) - of("local", 0, r) for r in per_round), 1
            ),
            "voluntary_switches_per_s": {
                app: round(statistics.median(of(app, 1, r) for r in per_round)) for app in apps
            },
            "involuntary_switches_per_s": {
                app: round(statistics.median(of(app, 2, r) for r in per_round)) for app in apps
            },
        }
    totals = [
        sum(v[0] for v in r["redis"].values()) / sum(v[0] for v in r["local"].values())
        for r in per_round
    ]
    report["cpu_ratio_rounds"] = sorted(round(ratio, 3) for ratio in totals)
    report["cpu_ratio"] = round(statistics.median(totals), 3)
    return report


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
