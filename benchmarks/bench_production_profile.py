"""What each telemetry choice of the host costs per request: FastAPI's own spans and metrics,
the exemplar filter, head sampling, the library's detail level.

Run: ``.venv/bin/python benchmarks/bench_production_profile.py [--calls N] [--rounds N]``.

A FastAPI app shaped like the reference app (``RequestContextMiddleware``, a typed ``POST``
route running a one-step ``Pipeline`` whose step calls an ``InstrumentedBackend``, the
envelope's ``performance`` block) is called in this process through ASGI, without a server or
a socket, around a trivial backend that answers at once: what differs between the variants is
telemetry alone. Each variant has its own app and its own SDK (a ``BatchSpanProcessor`` into an
in-memory exporter and a metric reader, drained every 2 s by a thread as an exporter would), so
the figures are per-request CPU of this process (``time.process_time``, every thread), median of
alternating rounds. Against a real model call the absolute differences are what matter.

The OTLP exporter's batch sizes are not measured: its cost is the serialisation and the network
in the exporter's own thread, which an in-memory exporter does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench_telemetry import INFO, AskStep, Sdk, TrivialBackend  # its folder: run as a script
from fastapi import FastAPI
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from pydantic import BaseModel

from llm_server.core.config import FrameworkSettings
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.opentelemetry_integration import Telemetry, set_telemetry
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi import RequestContextMiddleware

Call = Callable[[], Awaitable[object]]
BODY = json.dumps({"prompt": "What is the capital of France?"}).encode()


class PredictionRequest(BaseModel):
    prompt: str


def make_app(sdk: Sdk | None, telemetry: Telemetry, fastapi: dict[str, Any]) -> FastAPI:
    """The reference app's shape, with FastAPI's telemetry set as ``fastapi`` says."""
    options: dict[str, Any] = {"tracing": False, "metrics": False, "logs": False}
    if sdk is not None:
        options = {
            "tracer_provider": sdk.tracer_provider,
            "meter_provider": sdk.meter_provider,
            "logs": False,
            **fastapi,
        }
    app = FastAPI(telemetry=options)  # type: ignore[typeddict-item]
    app.add_middleware(RequestContextMiddleware)
    backend = telemetry.instrument(TrivialBackend(), INFO)
    pipeline = Pipeline([AskStep(backend)], name="predict", telemetry=telemetry)

    @app.post("/predict")
    async def predict(request: PredictionRequest) -> dict[str, Any]:
        metrics = PerformanceMetrics()
        result = await pipeline.execute(
            PipelineData(media_type=MediaType.TEXT, content=request.prompt)
        )
        metrics.mark_checkpoint("pipeline_complete")
        return {"data": {"response": result.content}, "performance": metrics.get_summary()}

    return app


def asgi_call(app: FastAPI) -> Call:
    """One ``POST /predict`` through the app's ASGI interface."""
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def call() -> object:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # a client that stays: never a disconnect
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}

        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope_base), receive, send)
        if status != [200]:
            raise RuntimeError(f"POST /predict answered {status}")
        return None

    return call


def variants() -> dict[str, tuple[Telemetry, Call]]:
    """Each host setup: the process-wide telemetry it sets, and one request through it."""

    def lib(sdk: Sdk | None, **settings: Any) -> Telemetry:
        if sdk is None:
            return Telemetry(FrameworkSettings(_env_file=None, otel_enabled=False))
        return sdk.telemetry(**settings)

    setups: dict[str, tuple[Sdk | None, dict[str, Any], dict[str, Any]]] = {
        # name: (sdk, the library's settings, FastAPI's telemetry options)
        "no SDK": (None, {}, {}),
        "SDK, FastAPI all on, library genai": (Sdk(), {}, {}),
        "SDK, FastAPI operation spans off, genai": (Sdk(), {}, {"operation_spans": False}),
        "SDK, FastAPI tracing off, genai": (Sdk(), {}, {"tracing": False}),
        "SDK, FastAPI tracing+metrics off, genai": (
            Sdk(),
            {},
            {"tracing": False, "metrics": False},
        ),
        "SDK, FastAPI all on, library full": (Sdk(), {"telemetry_detail": "full"}, {}),
        "SDK, FastAPI all on, exemplars off, genai": (Sdk(exemplars=False), {}, {}),
        "SDK, FastAPI all on, 10% sampled, genai": (
            Sdk(sampler=ParentBased(TraceIdRatioBased(0.1))),
            {},
            {},
        ),
        "production profile": (
            Sdk(exemplars=False, sampler=ParentBased(TraceIdRatioBased(0.1))),
            {},
            {"operation_spans": False},
        ),
    }
    result: dict[str, tuple[Telemetry, Call]] = {}
    for name, (sdk, settings, fastapi) in setups.items():
        telemetry = lib(sdk, **settings)
        result[name] = (telemetry, asgi_call(make_app(sdk, telemetry, fastapi)))
    return result


async def cpu_per_call(telemetry: Telemetry, call: Call, calls: int) -> float:
    set_telemetry(telemetry)  # what the host's lifespan does; the middleware reads it
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, float]:
    runs = variants()
    for telemetry, call in runs.values():  # warm up
        await cpu_per_call(telemetry, call, min(calls, 500))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds):
        names = list(runs) if index % 2 == 0 else list(reversed(runs))
        for name in names:
            samples[name].append(await cpu_per_call(*runs[name], calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results = asyncio.run(measure(args.calls, args.rounds))
    base = results["no SDK"]
    on = results["SDK, FastAPI all on, library genai"]
    print(
        f"bench_production_profile: {args.calls} requests x {args.rounds} rounds through ASGI, "
        "trivial backend, process CPU, median round"
    )
    print(f"\n  {'host setup':<44}{'us/request':>11}{'vs no SDK':>11}{'vs all on':>11}")
    for name, value in results.items():
        print(f"  {name:<44}{value:>11.1f}{value - base:>+11.1f}{value - on:>+11.1f}")


if __name__ == "__main__":
    main()
