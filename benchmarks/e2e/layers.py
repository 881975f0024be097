"""The library's per-request CPU, layer by layer, in one process (no HTTP server in the way).

    python benchmarks/e2e/layers.py [--quick]

Against the local provider in its own process, the same prompt-per-call workload runs
through successively more of the reference app's path, from the hand-written call (H) to the
reference app's whole handler body (F without FastAPI):

1. ``H``: ``Predict.acall`` under ``dspy.context(lm=...)``, the model built like H's.
2. ``bare backend``: ``DSPyBackend.predict`` (request scope, exact usage, cost, errors).
3. ``composed backend``: ``model_manager.backend_for(...)``: + deadline, fallbacks, retries,
   breaker, telemetry (off).
4. ``pipeline``: + ``Pipeline([ModelProcessor(...)])`` built and run per request.
5. ``handler``: the reference app's ``predict_text`` body: + ``PerformanceMetrics``,
   ``MetadataCollector`` and the envelope (returned as a dict; FastAPI's encoding excluded).

CPU is this process's (all threads: DSPy hops to worker threads) per call, 16 calls in flight
at a time, variants alternating in rounds, median of the rounds. The cyclic garbage
collector's time per call and its young-generation passes (a proxy for allocations) are
recorded too: a full collection of a heap holding DSPy costs tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

Call = Callable[[int], Awaitable[Any]]
_IN_FLIGHT = 16


class _GcMeter:
    """Time spent in, and count of, the cyclic garbage collector's passes (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def reset(self) -> None:
        self.seconds, self.collections = 0.0, [0, 0, 0]


_GC = _GcMeter()


async def _cpu_per_call(call: Call, calls: int, offset: int) -> float:
    """Process CPU microseconds per call, ``_IN_FLIGHT`` calls at a time."""
    started = time.process_time()
    for base in range(0, calls, _IN_FLIGHT):
        await asyncio.gather(*(call(offset + base + i) for i in range(_IN_FLIGHT)))
    return (time.process_time() - started) / calls * 1e6


async def _variants(app_module: Any) -> tuple[dict[str, Call], Any]:
    import dspy

    from e2e.apps._common import make_lm
    from llm_server.core.implementations import DefaultOutputProcessor, ModelProcessor
    from llm_server.core.pipeline import Pipeline
    from llm_server.core.types import MediaType, PipelineData
    from llm_server.models.predictor import Predictor

    lifespan = app_module.app.router.lifespan_context(app_module.app)
    await lifespan.__aenter__()
    pm = app_module.app.state.program_manager
    mm = pm.model_manager
    lm = make_lm()
    h_program = dspy.Predict(Predictor)
    bare = mm.single_attempt_backend(dspy.Predict(Predictor), "gpt-4o-mini")
    composed = mm.backend_for(Predictor, "gpt-4o-mini")
    request = app_module.PredictionRequest

    def prompt(n: int) -> str:
        return f"Question {n}: what is {n} plus {n}?"

    async def h(n: int) -> Any:
        with dspy.context(lm=lm):
            return await h_program.acall(input=prompt(n))

    async def pipeline(n: int) -> Any:
        step = ModelProcessor(
            model_manager=mm,
            model_id="gpt-4o-mini",
            signature_class=Predictor,
            input_key="input",
            output_processor=DefaultOutputProcessor(),
            accepted_types=[MediaType.TEXT],
            output_type=MediaType.TEXT,
        )
        return await Pipeline([step]).execute(
            PipelineData(media_type=MediaType.TEXT, content=prompt(n))
        )

    variants: dict[str, Call] = {
        "H": h,
        "bare backend": lambda n: bare.predict({"input": prompt(n)}),
        "composed backend": lambda n: composed.predict({"input": prompt(n)}),
        "pipeline": pipeline,
        "handler": lambda n: app_module.predict_text(request(prompt=prompt(n))),
    }
    return variants, lifespan


async def measure_async(calls: int, rounds: int) -> dict[str, Any]:
    import importlib

    app_module = importlib.import_module("main")
    variants, lifespan = await _variants(app_module)
    offset = 0
    for call in variants.values():  # warm up: lazy imports, connection pools
        await _cpu_per_call(call, _IN_FLIGHT * 4, offset)
        offset += _IN_FLIGHT * 4
    samples: dict[str, list[float]] = {name: [] for name in variants}
    gc_us: dict[str, float] = dict.fromkeys(variants, 0.0)
    young: dict[str, int] = dict.fromkeys(variants, 0)
    for index in range(rounds):
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        for name in names:
            _GC.reset()
            samples[name].append(await _cpu_per_call(variants[name], calls, offset))
            gc_us[name] += _GC.seconds * 1e6
            young[name] += _GC.collections[0]
            offset += calls
    await lifespan.__aexit__(None, None, None)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    total = calls * rounds
    return {
        "calls": calls,
        "rounds": rounds,
        "in_flight": _IN_FLIGHT,
        "us_per_call": medians,
        # Mean over all rounds: full collections are rare and land in one round or another.
        "gc_us_per_call": {name: value / total for name, value in gc_us.items()},
        "gen0_per_1000_calls": {name: young[name] * 1000 / total for name in variants},
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Run the layers benchmark against a provider process; returns microseconds per call."""
    from e2e.serve import load

    calls, rounds = (160, 3) if quick else (480, 7)
    with _procs.provider() as provider:
        os.environ["LLM_SERVER_PROVIDER_URL"] = provider.base_url
        load("F")  # chdir into a copy of the reference app, importable as `main`
        return asyncio.run(measure_async(calls, rounds))


def run(*, quick: bool = False) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (it imports the app and changes directory)."""
    command = [_procs.PYTHON, __file__, *(["--quick"] if quick else [])]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    _procs.measure_cli(measure, __doc__)


if __name__ == "__main__":
    main()
