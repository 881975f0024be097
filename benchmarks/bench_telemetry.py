"""Per-call cost of the library's telemetry, off and on, in one run.

Run: ``.venv/bin/python benchmarks/bench_telemetry.py [--calls N] [--rounds N]``.

Two measurements, each variant timed alternately for several rounds, best round kept:

1. **Model call**: ``InstrumentedBackend.predict`` around a trivial async backend that returns
   a ready ``ModelOutput``, against awaiting the bare backend:

   - ``off``: ``otel_enabled=False`` (the no-op telemetry);
   - ``on_no_sdk``: enabled, but the host configured no SDK (the API's global no-op providers);
   - ``on_sdk``: enabled with the SDK, a ``SimpleSpanProcessor`` into an in-memory exporter and
     an in-memory metric reader (spans and metrics really recorded).

2. **Request**: a one-step pipeline whose step calls the instrumented backend (pipeline span,
   step span, model span and four histograms/counters when on), as ratios to the same request
   with the library's telemetry disabled.

The trivial backend makes these worst-case ratios: against a real model call (DSPy's
``Predict.acall`` costs ~4 ms of CPU here, see FACTS.md) the absolute overhead per call, also
printed, is what matters.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_server.core.config import FrameworkSettings
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

Call = Callable[[], Awaitable[object]]
INFO = ModelCallInfo.from_model_name("openai/gpt-4o-mini", api_base="http://127.0.0.1:8001/v1")
OUTPUT = ModelOutput(
    content={"answer": "Paris"},
    model_id="bench",
    usage=TokenUsage(50, 150, 200, TokenCountMethod.EXACT),
    cost_usd=0.0001,
    response_model="gpt-4o-mini-2024-07-18",
    finish_reasons=("stop",),
)


class TrivialBackend:
    """A ModelBackend that answers at once."""

    model_id = "bench"
    program_metadata: Any = None
    last_prompt_tokens: int | None = None
    last_completion_tokens: int | None = None

    async def predict(self, input: Any) -> ModelOutput:
        return OUTPUT

    def get_lm_history(self) -> list[Any]:
        return []


class AskStep:
    """A text step that calls a backend (the shape of ModelProcessor, minus DSPy)."""

    name = "ask"
    accepted_media_types = (MediaType.TEXT,)

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    async def process(self, data: PipelineData) -> PipelineData:
        result = await self.backend.predict({"question": data.content})
        return PipelineData(media_type=MediaType.TEXT, content=result.content["answer"])


def telemetries() -> tuple[dict[str, Telemetry], InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    on = FrameworkSettings(otel_enabled=True, otel_capture_message_content=False)
    return {
        "off": Telemetry(FrameworkSettings(otel_enabled=False)),
        # no providers given and none set globally: the API's proxies, which are no-ops
        "on_no_sdk": Telemetry(on),
        "on_sdk": Telemetry(on, tracer_provider=tracer_provider, meter_provider=meter_provider),
    }, exporter


async def time_calls(call: Call, calls: int) -> float:
    """Seconds to await ``call()`` ``calls`` times in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return time.perf_counter() - start


async def best_per_call(
    variants: dict[str, Call], calls: int, rounds: int, exporter: InMemorySpanExporter
) -> dict[str, float]:
    """Best per-call seconds of each variant over alternating rounds."""
    best = dict.fromkeys(variants, float("inf"))
    for call in variants.values():  # warm up
        await time_calls(call, min(calls, 1000))
    for _ in range(rounds):
        for name, call in variants.items():
            exporter.clear()
            best[name] = min(best[name], await time_calls(call, calls) / calls)
    return best


def report(title: str, results: dict[str, float], baseline: str, order: Sequence[str]) -> None:
    base = results[baseline]
    print(f"\n{title} (baseline: {baseline} = {base * 1e6:.2f} us/call)")
    print(f"  {'variant':<12}{'us/call':>10}{'overhead us':>14}{'ratio':>9}")
    for name in order:
        value = results[name]
        print(f"  {name:<12}{value * 1e6:>10.2f}{(value - base) * 1e6:>14.2f}{value / base:>9.2f}")


async def main(calls: int, rounds: int) -> None:
    telemetry, exporter = telemetries()
    bare = TrivialBackend()
    backends = {name: t.instrument(TrivialBackend(), INFO) for name, t in telemetry.items()}
    model_variants: dict[str, Call] = {"bare": lambda: bare.predict("q")}
    for name, backend in backends.items():
        model_variants[name] = lambda backend=backend: backend.predict("q")  # type: ignore[misc]
    model = await best_per_call(model_variants, calls, rounds, exporter)

    data = PipelineData(media_type=MediaType.TEXT, content="What is the capital of France?")
    request_variants: dict[str, Call] = {}
    for name, t in telemetry.items():
        pipeline = Pipeline([AskStep(backends[name])], name="qa", telemetry=t)
        request_variants[name] = lambda pipeline=pipeline: pipeline.execute(data)  # type: ignore[misc]
    request = await best_per_call(request_variants, calls, rounds, exporter)

    print(f"bench_telemetry: {calls} calls x {rounds} rounds, best round per variant")
    report(
        "1. model call: InstrumentedBackend vs the bare backend",
        model,
        "bare",
        ["bare", "off", "on_no_sdk", "on_sdk"],
    )
    report(
        "2. request: one-step pipeline + model call vs telemetry disabled",
        request,
        "off",
        ["off", "on_no_sdk", "on_sdk"],
    )
    dspy_cpu_s = 0.004
    extra = request["on_sdk"] - request["off"]
    print(
        f"\n  on_sdk adds {extra * 1e6:.1f} us per request: {extra / dspy_cpu_s:.1%} of the "
        "~4 ms CPU of one DSPy Predict.acall (FACTS.md)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
