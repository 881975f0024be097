"""Run every benchmark under ``benchmarks/`` and write ``docs/benchmarks.md``.

    python benchmarks/run_all.py            # the full suite (~12-14 min on 2 cores)
    python benchmarks/run_all.py --quick    # a smoke run (~3 min), same report shape
    python benchmarks/run_all.py --only e2e,profile --output /tmp/bench.md

Parts, in order: the component benchmarks (``bench_*.py``), start-up, the library's CPU
per request layer by layer (in-process), end to end (F, F with an
OpenTelemetry SDK, H, D, R at provider latency 0/200 ms and concurrency 1/64/256), cost growth
(RSS after 1,000 and 10,000 requests), reliability under load (what a refused request costs,
how fast a breaker recovers under c=50/200 traffic), streaming, a fleet with and without
Redis (throughput, round trips, limit checks, outages) and a profile of the reference app.
Everything talks to 127.0.0.1 only. Optional tools are detected, never required: uvloop and
httptools (uvicorn picks them when installed; the report lists their versions) and py-spy
(the profile falls back to cProfile without it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _components  # noqa: E402 -- benchmarks/ is not a package; the path is set above
import _render  # noqa: E402
import _report  # noqa: E402
from e2e import (  # noqa: E402
    fleet,
    gcstats,
    layers,
    profiling,
    reliability,
    rss,
    startup,
    streaming,
    throughput,
)

PARTS = (
    "components",
    "startup",
    "layers",
    "e2e",
    "gc",
    "rss",
    "reliability",
    "streaming",
    "fleet",
    "profile",
)


def run(parts: tuple[str, ...], *, quick: bool) -> dict[str, Any]:
    """Run the selected parts; returns every result plus the run's metadata."""
    started = time.perf_counter()
    results: dict[str, Any] = {}

    runners: dict[str, Callable[[], Any]] = {
        "components": lambda: _components.run_all(quick=quick),
        "startup": lambda: startup.measure(quick=quick),
        "layers": lambda: layers.run(quick=quick),
        "e2e": lambda: throughput.run_matrix(quick=quick),
        "gc": lambda: gcstats.measure(quick=quick),
        "rss": lambda: rss.measure(quick=quick),
        "reliability": lambda: reliability.measure(quick=quick),
        "streaming": lambda: streaming.measure(quick=quick),
        "fleet": lambda: fleet.measure(quick=quick),
        "profile": lambda: {
            name: profiling.profile_app(name, quick=quick) for name in ("F", "F_otel", "H")
        },
    }
    errors: dict[str, str] = {}
    for name in PARTS:
        if name not in parts:
            continue
        print(f"== {name} ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr)
        try:
            results[name] = runners[name]()
        except Exception as exc:  # one broken part must not cost the others' results
            detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
            errors[name] = "".join(traceback.format_exception(exc)) + (detail or "")
            print(errors[name], file=sys.stderr)
    results["meta"] = {
        "quick": quick,
        "parts": list(parts),
        "machine": _report.machine(),
        "versions": _report.versions(),
        "revision": _report.git_revision(ROOT),
        "elapsed_s": time.perf_counter() - started,
        "errors": errors,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (~3 min)")
    parser.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also save the raw results here")
    parser.add_argument("--render", type=Path, help="only re-render saved --json results")
    args = parser.parse_args()
    if args.render:
        args.output.write_text(_render.render(json.loads(args.render.read_text())))
        return
    parts = tuple(args.only.split(",")) if args.only else PARTS
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results = run(parts, quick=args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_render.render(results))
    print(f"wrote {args.output} in {results['meta']['elapsed_s'] / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
