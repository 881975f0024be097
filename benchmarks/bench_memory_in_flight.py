"""Memory held per request in flight: RSS and tracemalloc with 200 requests waiting on a model.

Run: ``.venv/bin/python benchmarks/bench_memory_in_flight.py [--in-flight N] [--latency-ms N]``.

The reference app's handler body (``PerformanceMetrics``, a one-step ``Pipeline`` around
``ModelProcessor`` and DSPy's ``Predict`` on the native engine, the envelope's summary) runs
in this process against the local provider in its own process, which answers after
``--latency-ms``. After a warm-up, ``--in-flight`` requests are started at once; half-way
through the provider's latency, while every one of them is in flight, the process's RSS and
the Python heap (``tracemalloc``, started after the warm-up) are read and compared with the
idle process just before. The heap growth is then split by the source file that allocated it
(top 15), which says what a request holds while it waits: the prompt, the answer-to-be and the
envelope are a few KiB; the rest is the stack's per-request state (tasks, coroutine frames,
DSPy's messages, the HTTP client's request, spans).

Variants: telemetry off, and the default detail level with an SDK (batch processor into
memory); and a fault storm (every provider answer a 503 after the same latency, breakers kept
closed so that the requests stay in flight, three attempts each): read at 1.5 latencies, when
every request has failed once and waits on its second attempt. Each runs in its own
interpreter, so none inherits another's heap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "examples" / "reference_app" / "config" / "model_config.yml"


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


async def measure(
    in_flight: int, latency_s: float, telemetry_on: bool, fault: bool
) -> dict[str, Any]:
    from llm_server.core.config import FrameworkSettings
    from llm_server.core.implementations import DefaultOutputProcessor, ModelProcessor
    from llm_server.core.metrics_wrappers import PerformanceMetrics
    from llm_server.core.opentelemetry_integration import Telemetry
    from llm_server.core.pipeline import Pipeline
    from llm_server.core.types import MediaType, PipelineData
    from llm_server.defaults import YamlConfigProvider
    from llm_server.models.manager import ModelManager
    from llm_server.models.predictor import Predictor

    base = {"_env_file": None, "otel_capture_message_content": False}
    telemetry = Telemetry(FrameworkSettings(otel_enabled=False, **base))
    if telemetry_on:
        from bench_telemetry import Sdk  # its folder: run as a script

        telemetry = Sdk().telemetry()
    if fault:  # the breaker never opens: every request stays in flight through its retries
        base["breaker_failure_threshold"] = 10**9  # consecutive failures: never reached
        base["retry_initial_backoff_s"] = latency_s / 10
    manager = ModelManager(
        config_provider=YamlConfigProvider(CONFIG),
        settings=FrameworkSettings(otel_enabled=False, **base),
        telemetry=telemetry,
    )

    async def request(n: int) -> dict[str, Any]:
        metrics = PerformanceMetrics()
        step = ModelProcessor(
            model_manager=manager,
            model_id="gpt-4o-mini",
            signature_class=Predictor,
            input_key="input",
            output_processor=DefaultOutputProcessor(),
            accepted_types=[MediaType.TEXT],
            output_type=MediaType.TEXT,
        )
        data = PipelineData(media_type=MediaType.TEXT, content=f"Question {n}: {n} + {n}?")
        await Pipeline([step], telemetry=telemetry).execute(data)
        metrics.mark_checkpoint("pipeline_complete")
        return metrics.get_summary()

    # Warm up at full concurrency: connection pools, lazy imports, caches reach their size.
    for round_ in range(2):
        await asyncio.gather(
            *(request(round_ * in_flight + i) for i in range(in_flight)), return_exceptions=True
        )
    import gc

    gc.collect()
    tracemalloc.start(1)
    idle_rss = rss_bytes()
    idle = tracemalloc.take_snapshot()
    tasks = [asyncio.create_task(request(10_000 + i)) for i in range(in_flight)]
    await asyncio.sleep(latency_s * (1.5 if fault else 0.5))
    busy_rss = rss_bytes()
    busy = tracemalloc.take_snapshot()
    finished = sum(task.done() for task in tasks)  # 0: every request was in flight
    await asyncio.gather(*tasks, return_exceptions=True)
    tracemalloc.stop()
    stats = busy.compare_to(idle, "filename")
    total = sum(s.size_diff for s in stats)
    top = [
        {"file": _short(s.traceback[0].filename), "kib": s.size_diff / 1024, "blocks": s.count_diff}
        for s in stats[:15]
    ]
    return {
        "in_flight": in_flight,
        "telemetry": ("genai + SDK" if telemetry_on else "off")
        + (", fault storm" if fault else ""),
        "heap_growth_kib_per_request": total / 1024 / in_flight,
        "rss_growth_kib_per_request": (busy_rss - idle_rss) / 1024 / in_flight,
        "finished_at_read": finished,
        "top_files_kib": top,
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    result = asyncio.run(
        measure(args.in_flight, args.latency_ms / 1000, args.telemetry, args.fault)
    )
    json.dump(result, sys.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=2000)
    parser.add_argument("--telemetry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fault", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(HERE))
    from e2e import _procs

    results = []
    with _procs.provider(latency_ms=args.latency_ms) as provider:
        env = {
            **os.environ,
            "LLM_SERVER_PROVIDER_URL": provider.base_url,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        for telemetry, fault in ((False, False), (True, False), (True, True)):
            if fault:
                provider.command("down")
            command = [
                sys.executable,
                __file__,
                "--child",
                "--in-flight",
                str(args.in_flight),
                "--latency-ms",
                str(args.latency_ms),
                *(["--telemetry"] if telemetry else []),
                *(["--fault"] if fault else []),
            ]
            out = subprocess.run(
                command, env=env, capture_output=True, text=True, check=True, timeout=600
            )
            results.append(json.loads(out.stdout))
    print(
        f"bench_memory_in_flight: {args.in_flight} requests in flight, provider latency "
        f"{args.latency_ms:.0f} ms, read half-way"
    )
    for result in results:
        print(
            f"\ntelemetry {result['telemetry']}: heap +{result['heap_growth_kib_per_request']:.1f}"
            f" KiB per request in flight (tracemalloc), RSS +"
            f"{result['rss_growth_kib_per_request']:.1f} KiB per request "
            f"({result['finished_at_read']} finished before the reading)"
        )
        for row in result["top_files_kib"]:
            print(f"  {row['kib']:>9.1f} KiB {row['blocks']:>8} blocks  {row['file']}")


if __name__ == "__main__":
    main()
