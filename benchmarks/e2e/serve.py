"""Serve one benchmark app under uvicorn (one worker, this process), on 127.0.0.1.

    python benchmarks/e2e/serve.py F --port 8100      # the reference app
    python benchmarks/e2e/serve.py F_otel --port 8101 # the same, OpenTelemetry SDK exporting
    python benchmarks/e2e/serve.py F_prod --port 8104 # the same, production telemetry profile
    python benchmarks/e2e/serve.py H|H_otel|H_freeze|D|R --port 8102
    python benchmarks/e2e/serve.py G --port 8103       # the guarded app of the reliability runs

``LLM_SERVER_PROVIDER_URL`` must point at the local provider. The reference app runs from a
temporary folder holding a copy of its ``config/``, so its program storage never lands in the
repository. Access logs are off for every app alike.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFERENCE_APP = HERE.parent.parent / "examples" / "reference_app"
APPS = ("F", "F_otel", "F_prod", "G", "H", "HS", "H_otel", "H_freeze", "D", "R")


def _reference_app_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="llm-server-bench-"))
    shutil.copytree(REFERENCE_APP / "config", folder / "config")
    shutil.copy(REFERENCE_APP / "main.py", folder / "main.py")
    return folder


def load(name: str) -> Any:  # noqa: PLR0911 -- one return per kind of app
    """Import app ``name`` and return its ASGI app."""
    sys.path.insert(0, str(HERE.parent))  # `e2e.apps...` importable
    if name in ("F", "F_otel", "F_prod"):
        folder = _reference_app_folder()
        os.chdir(folder)
        sys.path.insert(0, str(folder))
        if name == "F_otel":
            from e2e.apps.f_otel import load_app

            return load_app()
        if name == "F_prod":
            from e2e.apps.f_prod import load_app as load_prod

            return load_prod()
        return importlib.import_module("main").app
    if name == "G":
        from e2e.apps.g_app import load_app as load_g

        return load_g()
    if name == "HS":
        from e2e.apps.hs_app import app as hs_app

        return hs_app
    if name == "H_otel":
        from e2e.apps.h_otel import load_app as load_h

        return load_h()
    if name == "H_freeze":
        from e2e.apps.h_freeze import load_app as load_h_freeze

        return load_h_freeze()
    module = importlib.import_module(f"e2e.apps.{name.lower()}_app")
    return module.app


def _record_gc(path: str) -> None:
    """Time every garbage collection by generation; SIGUSR1 writes the totals to ``path``."""
    import gc
    import json
    import signal
    import time

    seconds, counts, started = [0.0, 0.0, 0.0], [0, 0, 0], [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            seconds[info["generation"]] += time.perf_counter() - started[0]
            counts[info["generation"]] += 1

    def dump(*_: Any) -> None:
        totals = {"seconds": seconds, "counts": counts, "frozen": gc.get_freeze_count()}
        Path(path).write_text(json.dumps(totals), encoding="utf-8")

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, dump)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=APPS)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    app = load(args.app)
    gc_stats_to = os.environ.get("BENCH_GC_STATS")
    if gc_stats_to:
        _record_gc(gc_stats_to)
    profile_to = os.environ.get("BENCH_CPROFILE")  # the profiler's fallback without py-spy
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    # loop/http "auto": uvloop and httptools when installed (uvicorn[standard]), else asyncio/h11.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    if profiler is not None and profile_to:
        profiler.disable()
        profiler.dump_stats(profile_to)


if __name__ == "__main__":
    main()
