"""Per-call cost of the library's telemetry, off and on, by detail level and item, in one run.

Run: ``.venv/bin/python benchmarks/bench_telemetry.py [--calls N] [--rounds N]``.

Each variant is timed alternately for several rounds (the order reversed every other round),
in process CPU time (``time.process_time``: every thread, the SDK's batch thread included),
and the median round is kept: on a machine loaded by other work CPU time holds up where wall
time does not. The SDK is what a production host sets up: a ``BatchSpanProcessor`` into an
in-memory exporter and a metric reader, drained every 2 s by a thread as an exporter would.

1. **Model call**: ``InstrumentedBackend.predict`` around a trivial async backend that returns
   a ready ``ModelOutput``, against awaiting the bare backend:

   - ``off``: ``otel_enabled=False`` (the no-op telemetry);
   - ``on_no_sdk``: enabled, but the host configured no SDK (the API's global no-op providers);
   - ``on_sdk``: enabled with the SDK, at the default detail level (``genai``);
   - ``on_sdk_full``: the same at ``telemetry_detail="full"``.

2. **Request**: a one-step pipeline whose step calls the instrumented backend, as ratios to
   the same request with the library's telemetry disabled.

3. **Per item**: what each signal costs a request, from the differences between variants that
   add one item at a time (the default level's chat span and metrics, the duration's exemplar,
   the legacy ``llm.*`` attributes, the request span, the per-call extras, the pipeline and
   step spans), so a user can choose a level knowing its price.

The trivial backend makes these worst-case ratios: against a real model call (DSPy's
``Predict.acall`` costs ~1-4 ms of CPU here, DSPy 3.4) the absolute overhead per call, also
printed, is what matters; ``bench_telemetry_levels.py`` measures it around a real call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

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
    metadata={"lm_calls": 1, "connection_wait_ms": 0.05},  # as DSPy's native engine reports
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


class Sdk:
    """A production host's providers, exporting to memory, drained in the background."""

    def __init__(self, *, exemplars: bool = True, sampler: Sampler | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler=sampler)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        options: dict[str, Any] = (
            {} if exemplars else {"exemplar_filter": AlwaysOffExemplarFilter()}
        )
        self.meter_provider = MeterProvider(metric_readers=[self.reader], **options)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            time.sleep(2.0)
            self.exporter.clear()
            self.reader.get_metrics_data()

    def telemetry(self, **settings: Any) -> Telemetry:
        values = {"otel_enabled": True, "otel_capture_message_content": False, **settings}
        return Telemetry(
            FrameworkSettings(_env_file=None, **values),
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )


def telemetries() -> dict[str, Telemetry]:
    """Every variant; one SDK each, so no two share an instrument."""
    on = FrameworkSettings(_env_file=None, otel_enabled=True, otel_capture_message_content=False)
    return {
        "off": Telemetry(FrameworkSettings(_env_file=None, otel_enabled=False)),
        # no providers given and none set globally: the API's proxies, which are no-ops
        "on_no_sdk": Telemetry(on),
        "on_sdk": Sdk().telemetry(),
        "on_sdk_full": Sdk().telemetry(telemetry_detail="full"),
        "genai_no_exemplars": Sdk(exemplars=False).telemetry(),
        "genai_llm_attrs": Sdk().telemetry(otel_llm_attributes=True),
        "full_no_llm_attrs": Sdk().telemetry(telemetry_detail="full", otel_llm_attributes=False),
    }


async def time_calls(call: Call, calls: int) -> float:
    """Process CPU seconds to await ``call()`` ``calls`` times in a row."""
    start = time.process_time()
    for _ in range(calls):
        await call()
    return time.process_time() - start


async def median_per_call(variants: dict[str, Call], calls: int, rounds: int) -> dict[str, float]:
    """Median per-call CPU seconds of each variant over alternating rounds."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm up
        await time_calls(call, min(calls, 1000))
    for index in range(rounds):
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        for name in names:
            samples[name].append(await time_calls(variants[name], calls) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, results: dict[str, float], baseline: str, order: Sequence[str]) -> None:
    base = results[baseline]
    print(f"\n{title} (baseline: {baseline} = {base * 1e6:.2f} us/call)")
    print(f"  {'variant':<12}{'us/call':>10}{'overhead us':>14}{'ratio':>9}")
    for name in order:
        value = results[name]
        print(f"  {name:<12}{value * 1e6:>10.2f}{(value - base) * 1e6:>14.2f}{value / base:>9.2f}")


async def main(calls: int, rounds: int) -> None:
    telemetry = telemetries()
    bare = TrivialBackend()
    backends = {name: t.instrument(TrivialBackend(), INFO) for name, t in telemetry.items()}
    model_variants: dict[str, Call] = {"bare": lambda: bare.predict("q")}
    for name, backend in backends.items():
        model_variants[name] = lambda backend=backend: backend.predict("q")  # type: ignore[misc]
    model = await median_per_call(model_variants, calls, rounds)

    data = PipelineData(media_type=MediaType.TEXT, content="What is the capital of France?")
    request_variants: dict[str, Call] = {}
    for name, t in telemetry.items():
        pipeline = Pipeline([AskStep(backends[name])], name="qa", telemetry=t)
        request_variants[name] = lambda pipeline=pipeline: pipeline.execute(data)  # type: ignore[misc]
    genai = telemetry["on_sdk"]
    in_span = Pipeline([AskStep(backends["on_sdk"])], name="qa", telemetry=genai)

    async def in_request_span() -> object:
        with genai.request_span("POST /predict", attributes={"http.route": "/predict"}):
            return await in_span.execute(data)

    request_variants["genai_request_span"] = in_request_span
    request = await median_per_call(request_variants, calls, rounds)

    print(
        f"bench_telemetry: {calls} calls x {rounds} rounds, process CPU, median round per variant"
    )
    report(
        "1. model call: InstrumentedBackend vs the bare backend",
        model,
        "bare",
        ["bare", "off", "on_no_sdk", "on_sdk", "on_sdk_full"],
    )
    report(
        "2. request: one-step pipeline + model call vs telemetry disabled",
        request,
        "off",
        ["off", "on_no_sdk", "on_sdk", "on_sdk_full"],
    )
    extras_per_call = model["full_no_llm_attrs"] - model["on_sdk"]
    items = [
        (
            "default level (genai): chat span, duration, tokens x2, cost",
            request["on_sdk"] - request["off"],
        ),
        ("  of which the duration's exemplar", request["on_sdk"] - request["genai_no_exemplars"]),
        ("  without an SDK (the API's no-ops)", request["on_no_sdk"] - request["off"]),
        (
            "request span (host traces no request)",
            request["genai_request_span"] - request["on_sdk"],
        ),
        ("legacy llm.* attributes (9)", request["genai_llm_attrs"] - request["on_sdk"]),
        ("active_calls +1/-1, connection_wait", extras_per_call),
        (
            "pipeline + step spans and durations",
            request["full_no_llm_attrs"] - request["on_sdk"] - extras_per_call,
        ),
        (
            "full level (all of the above but the request span)",
            request["on_sdk_full"] - request["off"],
        ),
    ]
    print("\n3. per item: CPU us per request (differences of the request variants)")
    for label, seconds in items:
        print(f"  {label:<58}{seconds * 1e6:>8.1f}")
    dspy_cpu_s = 0.004
    extra = request["on_sdk"] - request["off"]
    print(
        f"\n  on_sdk adds {extra * 1e6:.1f} us per request: {extra / dspy_cpu_s:.1%} of the "
        "~4 ms CPU of one DSPy Predict.acall (DSPy 3.4, measured here)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
