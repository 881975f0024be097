"""The OpenAI-compatible route's throughput against the program route's, in one app.

    python benchmarks/e2e/openai_overhead.py [--quick]

One provider process (no latency: the framework's own cost is all there is to see), app O
(``apps/o_app.py``) under uvicorn in a process of its own, and the load generator in a third.
The two paths are loaded one after the other in ABBA order, so drift on a noisy machine hits
both alike; each path's rounds are pooled. Prints JSON: each path's throughput, p50/p99 and
server CPU per request, and ``ratio`` = OpenAI route / program route throughput (target:
>= 0.95).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

PATHS = {
    "program_route": (
        "/programs/predictor",
        '{{"input": "Question {n}: what is {n} plus {n}?", "model_id": "gpt-4o-mini"}}',
    ),
    "openai_route": (
        "/v1/chat/completions",
        '{{"model": "predictor", "messages": [{{"role": "user", '
        '"content": "Question {n}: what is {n} plus {n}?"}}]}}',
    ),
}
CONCURRENCY = 64


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Load both paths in ABBA rounds; the pooled results and the throughput ratio."""
    with _procs.provider() as provider, _procs.serve_module("O", "o_app", provider.base_url) as app:
        pooled = _procs.load_paths_abba(app, PATHS, concurrency=CONCURRENCY, quick=quick)
    ratio = pooled["openai_route"]["throughput"] / pooled["program_route"]["throughput"]
    return {"concurrency": CONCURRENCY, "paths": pooled, "ratio": round(ratio, 3)}


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
