"""Reliability under load: what a refusal costs, and how fast a breaker recovers under traffic.

    python benchmarks/e2e/reliability.py [--quick]

Runs the guarded app (G: the lifespan helper, a program endpoint, error handlers, middleware,
health router) in its own uvicorn process against the local provider in another, on
127.0.0.1 only, every loop bounded in time:

* **Refusal cost**: CPU per request of the app process for served requests (breaker closed,
  0 ms provider) and for refused ones (breaker forced open): without an OpenTelemetry SDK,
  with one exporting, and with one exporting but FastAPI's own instrumentation (a server span
  and two metrics per request, on by default once an SDK exists) turned off, which separates
  FastAPI's cost from the library's. Target: refused / served <= 0.10.
* **Recovery under load**: ``concurrency`` closed-loop clients (200 by default) run through a
  0.3 s provider outage, with an OpenTelemetry SDK exporting. The breaker's state is read from
  ``GET /models`` every 50 ms. It reports when the breaker opened, the time from the later of
  the provider's recovery and the opening to the close (target: <= reset timeout + one
  probe's latency + 1 s, a probe's latency being a served request's p50 at this load before
  the outage), and the share of requests refused after that bound (target: 0).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs
from e2e.loadgen import _read_response

PATH = "/programs/predictor"
BODY = '{{"input": "Question {n}: what is {n} plus {n}?", "model_id": "gpt-4o-mini"}}'
RESET_TIMEOUT_S = 2.0
DEADLINE_S = 2.0
PROBE_LATENCY_S = 0.02  # the provider's latency during the recovery run


def _g_env(**extra: str) -> dict[str, str]:
    return {
        "LLM_SERVER_BREAKER_RESET_TIMEOUT_S": str(RESET_TIMEOUT_S),
        "LLM_SERVER_REQUEST_DEADLINE_S": str(DEADLINE_S),
        **extra,
    }


def _post(port: int, path: str) -> None:
    import httpx

    httpx.post(f"http://127.0.0.1:{port}{path}", timeout=10).raise_for_status()


def refusal_cost(*, otel: bool, fastapi_telemetry: bool = True, quick: bool) -> dict[str, Any]:
    """CPU per served and per refused request of the guarded app, and their ratio."""
    duration, warmup = (2.0, 1.0) if quick else (5.0, 2.0)
    extra = _g_env(
        BENCH_OTEL="1" if otel else "0",
        BENCH_FASTAPI_TELEMETRY="1" if fastapi_telemetry else "0",
    )
    with _procs.provider(0.0) as provider, _procs.app("G", provider.base_url, extra_env=extra) as g:
        runs: dict[str, dict[str, Any]] = {}
        for label in ("served", "refused"):
            if label == "refused":
                _post(g.port, "/bench/breaker/open")
            runs[label] = _procs.load(
                g.port, concurrency=16, duration_s=duration, warmup_s=warmup,
                server_pid=g.pid, path=PATH, body=BODY,
            )  # fmt: skip
        _post(g.port, "/bench/breaker/reset")
    per_request = {
        label: 1000 * run["server_cpu_s"] / max(1, run["completed"] + run["errors"])
        for label, run in runs.items()
    }
    return {
        "otel": otel,
        "fastapi_telemetry": otel and fastapi_telemetry,
        "served_cpu_ms": per_request["served"],
        "refused_cpu_ms": per_request["refused"],
        "ratio": per_request["refused"] / per_request["served"],
        "served_statuses": runs["served"]["statuses"],
        "refused_statuses": runs["refused"]["statuses"],
    }


@dataclass
class _Timeline:
    responses: list[tuple[float, int, float]] = field(default_factory=list)  # done, status, s
    states: list[tuple[float, str]] = field(default_factory=list)  # (time read, breaker state)


async def _client(port: int, stop_at: float, timeline: _Timeline, counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    try:
        while time.perf_counter() < stop_at:
            counter[0] += 1
            body = BODY.format(n=counter[0]).encode()
            sent = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, _ = await _read_response(reader)
            done = time.perf_counter()
            timeline.responses.append((done, status, done - sent))
    finally:
        writer.close()


async def _watch(port: int, stop_at: float, timeline: _Timeline) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            _, body = await _read_response(reader)
            state = json.loads(body)["models"][0]["breaker"]["state"]
            timeline.states.append((time.perf_counter(), state))
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def _recovery_timeline(
    port: int, provider: _procs.Provider, *, concurrency: int, outage_s: float, after_s: float
) -> tuple[_Timeline, float, float]:
    timeline = _Timeline()
    start = time.perf_counter()
    down_at = start + 2.0
    stop_at = down_at + outage_s + RESET_TIMEOUT_S + 2.0 + after_s
    counter = [0]
    tasks = [
        asyncio.create_task(_client(port, stop_at, timeline, counter)) for _ in range(concurrency)
    ]
    tasks.append(asyncio.create_task(_watch(port, stop_at, timeline)))
    await asyncio.sleep(down_at - time.perf_counter())
    await asyncio.to_thread(provider.command, "down")
    down_at = time.perf_counter()
    await asyncio.sleep(outage_s)
    await asyncio.to_thread(provider.command, "up")
    up_at = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=stop_at - up_at + 60)
    return timeline, down_at, up_at


def recovery(
    *, concurrency: int = 200, otel: bool = True, quick: bool = False, outage_s: float = 0.3
) -> dict[str, Any]:
    """Run ``concurrency`` clients through an outage (``outage_s``, 0.3 s by default); report
    opening, closing, refusals.

    With ``otel`` (the default) an OpenTelemetry SDK exports, as in production: every request
    the app handles costs more CPU, which is what starved the probes of a half-open breaker
    when refusals cost as much as served requests.
    """
    after_s = 2.0 if quick else 4.0
    extra = _g_env(BENCH_OTEL="1" if otel else "0")
    with (
        _procs.provider(PROBE_LATENCY_S * 1000) as provider,
        _procs.app("G", provider.base_url, extra_env=extra) as g,
    ):
        timeline, down_at, up_at = asyncio.run(
            _recovery_timeline(
                g.port, provider, concurrency=concurrency, outage_s=outage_s, after_s=after_s
            )
        )
    opened = next((t for t, s in timeline.states if t >= down_at and s == "open"), None)
    closed = next(
        (t for t, s in timeline.states if opened is not None and t > opened and s == "closed"),
        None,
    )
    # One probe's latency is a served request's under this load (the probes queue with the
    # refusals on the same loop), taken before the outage: the app's own p50 at this load.
    before = sorted(d for t, s, d in timeline.responses if t < down_at and s == 200)
    probe_latency = before[len(before) // 2] if before else float("nan")
    # The clock of the reset timeout starts when the breaker opened, which at high load can
    # be after the provider already recovered.
    recovered = max(up_at, opened) if opened is not None else up_at
    bound = RESET_TIMEOUT_S + probe_latency + 1.0
    settled = recovered + bound
    after = [status for t, status, _ in timeline.responses if t >= settled]
    refused_after = sum(1 for status in after if status == 503)
    return {
        "concurrency": concurrency,
        "otel": otel,
        "requests": len(timeline.responses),
        "statuses": {
            str(k): sum(1 for _, s, _ in timeline.responses if s == k)
            for k in sorted({s for _, s, _ in timeline.responses})
        },
        "opened_after_outage_s": None if opened is None else opened - down_at,
        "closed_after_recovery_s": None if closed is None else closed - recovered,
        "served_p50_before_outage_s": probe_latency,
        "close_bound_s": bound,
        "requests_after_settling": len(after),
        "refused_share_after_settling": refused_after / len(after) if after else None,
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Every measurement of this part."""
    return {
        "refusal": [
            refusal_cost(otel=False, quick=quick),
            refusal_cost(otel=True, quick=quick),
            refusal_cost(otel=True, fastapi_telemetry=False, quick=quick),
        ],
        "recovery": [recovery(concurrency=c, quick=quick) for c in (50, 200)],
    }


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
