"""The library's telemetry CPU per request, by detail level, with a real model call.

Run: ``.venv/bin/python benchmarks/bench_telemetry_levels.py [--calls N] [--rounds N]``.

The reference app's handler body (``PerformanceMetrics``, a one-step ``Pipeline`` around
``ModelProcessor`` and DSPy's ``Predict`` on the native engine, the envelope's summary), run in
this process against the local provider in its own process (0 ms latency), 16 requests in
flight. No HTTP server and no FastAPI in the way: what differs between the variants is the
library's telemetry alone, which is what "F+SDK with FastAPI's own telemetry off, minus F"
measures end to end. Variants, each with its own ``ModelManager`` and ``Telemetry``:

- ``off``: ``OTEL_ENABLED=false`` (the F baseline);
- ``no_sdk``: telemetry on, the host configured no SDK (the API's no-op providers);
- ``genai``: the default detail level, with the SDK as a production host sets it up (a
  ``BatchSpanProcessor`` into an in-memory exporter, a metric reader; drained every 2 s);
- ``genai+request_span``: the same inside ``telemetry.request_span`` (what the library's
  middleware opens when the host traces no request: FastAPI's own telemetry off);
- ``full``: ``LLM_SERVER_TELEMETRY_DETAIL=full`` with the same SDK;
- ``sdk_floor``: ``off`` plus, by hand, exactly the SDK calls the default level makes per
  request (the chat span with the same attributes, made current; the duration with its
  exemplar, the two token counts and the cost): what any library recording this telemetry with
  this SDK pays. ``genai`` minus ``sdk_floor`` is the library's own share.

CPU is this process's (``time.process_time``: every thread, the SDK's batch thread included;
not the provider's), per request. On a machine shared with other work the CPU time of the same
code drifts with the load (two runs' ``off`` differed by 15 %), so the variants alternate in
many short rounds (the order reversed every other round) and each variant's cost is the median
of its differences with ``off`` *in the same round*, printed with their interquartile range.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from e2e import _procs  # noqa: E402 -- benchmarks/ is not a package; the path is set above

CONFIG = HERE.parent / "examples" / "reference_app" / "config" / "model_config.yml"
IN_FLIGHT = 16
Call = Callable[[int], Awaitable[Any]]


def sdk() -> tuple[Any, Any]:
    """The tracer and meter providers of a production host, exporting to memory."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    def drain() -> None:  # what an exporter does: memory stays bounded
        while True:
            time.sleep(2.0)
            exporter.clear()
            reader.get_metrics_data()

    threading.Thread(target=drain, daemon=True).start()
    return tracer_provider, meter_provider


def sdk_floor(tracer_provider: Any, meter_provider: Any, off: Call) -> Call:
    """``off`` plus, by hand, the SDK calls the default level makes per request."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    tracer = tracer_provider.get_tracer("floor")
    meter = meter_provider.get_meter("floor")
    duration = meter.create_histogram("floor.duration", unit="s")
    tokens = meter.create_histogram("floor.token.usage", unit="{token}")
    cost = meter.create_counter("floor.cost", unit="USD")
    no_exemplar = trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "server.address": "127.0.0.1",
        "server.port": 8001,
        "llm_server.model_id": "gpt-4o-mini",
    }
    start = {**common, "gen_ai.request.max_tokens": 3000, "gen_ai.request.temperature": 0.7}
    metric = {**common, "gen_ai.response.model": "gpt-4o-mini"}
    token_in = {**metric, "gen_ai.token.type": "input"}
    token_out = {**metric, "gen_ai.token.type": "output"}

    async def run(n: int) -> dict[str, Any]:
        span = tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes=start)
        token = otel_context.attach(trace.set_span_in_context(span))
        began = time.perf_counter()
        result: dict[str, Any] = await off(n)
        span.set_attributes(
            {
                "llm_server.attempts": 1,
                "gen_ai.response.model": "gpt-4o-mini",
                "gen_ai.response.finish_reasons": ["stop"],
                "llm_server.usage.method": "dspy_history_exact",
                "gen_ai.usage.input_tokens": 139,
                "gen_ai.usage.output_tokens": 22,
                "llm_server.usage.cost_usd": 3.4e-05,
            }
        )
        duration.record(time.perf_counter() - began, metric)
        tokens.record(139, token_in, no_exemplar)
        tokens.record(22, token_out, no_exemplar)
        cost.add(3.4e-05, common, no_exemplar)
        span.end()
        otel_context.detach(token)
        return result

    return run


def variants() -> dict[str, Call]:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    from llm_server.core.config import FrameworkSettings
    from llm_server.core.implementations import DefaultOutputProcessor, ModelProcessor
    from llm_server.core.metrics_wrappers import PerformanceMetrics
    from llm_server.core.opentelemetry_integration import Telemetry
    from llm_server.core.pipeline import Pipeline
    from llm_server.core.types import MediaType, PipelineData
    from llm_server.defaults import YamlConfigProvider
    from llm_server.models.manager import ModelManager
    from llm_server.models.predictor import Predictor

    tracer_provider, meter_provider = sdk()
    base = {"_env_file": None, "otel_capture_message_content": False}
    on = FrameworkSettings(otel_enabled=True, **base)
    full = FrameworkSettings(otel_enabled=True, telemetry_detail="full", **base)
    telemetries = {
        "off": Telemetry(FrameworkSettings(otel_enabled=False, **base)),
        "no_sdk": Telemetry(
            on, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider()
        ),
        "genai": Telemetry(on, tracer_provider=tracer_provider, meter_provider=meter_provider),
        "full": Telemetry(full, tracer_provider=tracer_provider, meter_provider=meter_provider),
    }
    settings = FrameworkSettings(otel_enabled=False, **base)

    def handler(telemetry: Telemetry, *, request_span: bool = False) -> Call:
        manager = ModelManager(
            config_provider=YamlConfigProvider(CONFIG), settings=settings, telemetry=telemetry
        )

        async def run(n: int) -> dict[str, Any]:
            metrics = PerformanceMetrics()
            pipeline = Pipeline(
                [
                    ModelProcessor(
                        model_manager=manager,
                        model_id="gpt-4o-mini",
                        signature_class=Predictor,
                        input_key="input",
                        output_processor=DefaultOutputProcessor(),
                        accepted_types=[MediaType.TEXT],
                        output_type=MediaType.TEXT,
                    )
                ],
                telemetry=telemetry,
            )
            data = PipelineData(media_type=MediaType.TEXT, content=f"Question {n}: {n} + {n}?")
            await pipeline.execute(data)
            metrics.mark_checkpoint("pipeline_complete")
            return metrics.get_summary()

        if not request_span:
            return run

        async def in_request_span(n: int) -> dict[str, Any]:
            with telemetry.request_span("POST /predict", attributes={"http.route": "/predict"}):
                return await run(n)

        return in_request_span

    off = handler(telemetries["off"])

    return {
        "off": off,
        "no_sdk": handler(telemetries["no_sdk"]),
        "genai": handler(telemetries["genai"]),
        "genai+request_span": handler(telemetries["genai"], request_span=True),
        "full": handler(telemetries["full"]),
        "sdk_floor": sdk_floor(tracer_provider, meter_provider, off),
    }


async def cpu_per_call(call: Call, calls: int, offset: int) -> float:
    """Process CPU microseconds per call, ``IN_FLIGHT`` calls at a time."""
    started = time.process_time()
    for base in range(0, calls, IN_FLIGHT):
        await asyncio.gather(*(call(offset + base + i) for i in range(IN_FLIGHT)))
    return (time.process_time() - started) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    """Each variant's CPU microseconds per request, one sample per round."""
    runs = variants()
    offset = 0
    for call in runs.values():  # warm up: connection pools, lazy imports, first spans
        await cpu_per_call(call, IN_FLIGHT * 4, offset)
        offset += IN_FLIGHT * 4
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds):
        names = list(runs) if index % 2 == 0 else list(reversed(runs))
        for name in names:
            samples[name].append(await cpu_per_call(runs[name], calls, offset))
            offset += calls
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=64, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    with _procs.provider() as provider:
        os.environ["LLM_SERVER_PROVIDER_URL"] = provider.base_url
        samples = asyncio.run(measure(args.calls, args.rounds))
    off = samples["off"]
    print(
        f"bench_telemetry_levels: {args.calls} requests x {args.rounds} rounds per variant, "
        f"{IN_FLIGHT} in flight, process CPU; telemetry = median of the paired differences "
        "with off in the same round (interquartile range)"
    )
    print(f"\n  {'variant':<20}{'us/request':>12}{'telemetry us':>14}{'IQR':>18}")
    telemetry: dict[str, float] = {}
    for name, values in samples.items():
        diffs = sorted(v - o for v, o in zip(values, off, strict=True))
        q1, median, q3 = statistics.quantiles(diffs, n=4)
        telemetry[name] = median
        iqr = f"{q1:.0f} .. {q3:.0f}"
        print(f"  {name:<20}{statistics.median(values):>12.1f}{median:>14.1f}{iqr:>18}")
    print(
        f"\nlibrary telemetry per request (genai - off): {telemetry['genai']:.1f} us "
        "(target <= 150)"
    )
    print(f"library telemetry per request (full - off): {telemetry['full']:.1f} us")
    print(
        f"the SDK's floor for the same signals (sdk_floor - off): {telemetry['sdk_floor']:.1f} us;"
        f" the library's own part (genai - sdk_floor): "
        f"{telemetry['genai'] - telemetry['sdk_floor']:.1f} us"
    )


if __name__ == "__main__":
    main()
