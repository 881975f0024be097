"""Streaming: time to the first event, streams per second and memory per open stream.

    python benchmarks/e2e/streaming.py [--quick]

The guarded app G (``POST /programs/predictor/stream``) against HS, a hand-written
``dspy.streamify`` endpoint (``benchmarks/e2e/apps/hs_app.py``), both under uvicorn in their own
process against the local provider in another, on 127.0.0.1 only:

* **The provider's own times**, measured the same way: the request the apps' LM sent (DSPy's
  prompt) streamed to the provider directly, so its answer comes in the same chunks. Two
  marks: its first chunk (the role), and its first chunk carrying a field's text (the chunks
  before it hold DSPy's field header: nothing a stream listener could send). With 0 ms between
  chunks they are a few microseconds apart; paced, two pieces (~100 ms).
* **Time to the first event** at c=1 (sequential requests): from sending the request to the
  first ``delta`` event, minus the provider's own first chunk (target: < 2 ms), and minus its
  first field text.
* **Streams per second** at c=64, G / HS (the median of each app's rounds), and the p99 time
  to the first event.
* **Time to the first event at c=64, paced**: 64 clients at once while the provider paces its
  answer (20 pieces, 50 ms apart), their starts spread over one stream's length: the worker is
  busy but not saturated, as under chat traffic. The p99 is reported over the provider's own
  p99 first field text at that load (target: < 10 ms), over its p99 first chunk, and against
  the hand-written endpoint's p99. The saturated c=64 run above reports its p99 too: queueing.
* **Memory per open stream**: 100 streams held open at once (the provider pacing a long answer
  at 200 ms a piece), the app's RSS growth divided by 100.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

PATH = "/programs/predictor/stream"


def _request(port: int, path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


Marker = bytes | Callable[[bytes], bool]
"""What marks the first event: bytes it contains, or a test of everything read so far."""

_FIELD_TEXT = re.compile(r"\[\[ ## \w+ ## \]\]\s*\S")


def field_text_arrived(seen: bytes) -> bool:
    """Whether a provider's stream (OpenAI's format) read so far carries a field's first text:
    the chunks before it hold the role and DSPy's field header, nothing a listener can send."""
    content = []
    for line in seen.split(b"\n"):
        if line.startswith(b"data: {"):
            with contextlib.suppress(ValueError):  # a line cut by the read
                for choice in json.loads(line[6:]).get("choices", []):
                    content.append(choice.get("delta", {}).get("content") or "")
    return _FIELD_TEXT.search("".join(content)) is not None


async def _stream_once(port: int, payload: bytes, first: Marker, end: bytes) -> tuple[float, float]:
    """(seconds to the first event, seconds to the end) of one streamed request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(payload)
    seen, first_at = b"", None
    arrived = first if callable(first) else lambda seen: first in seen
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            seen += chunk
            if first_at is None and arrived(seen):
                first_at = time.perf_counter() - started
            if end in seen:
                break
    finally:
        writer.close()
    return (first_at if first_at is not None else float("nan")), time.perf_counter() - started


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _sequential(port: int, payload: bytes, first: Marker, end: bytes, n: int) -> list[float]:
    return [(await _stream_once(port, payload, first, end))[0] for _ in range(n)]


async def _concurrent(
    port: int,
    payload: bytes,
    first: Marker = b"event: delta",
    end: bytes = b"event: done",
    *,
    concurrency: int,
    seconds: float,
    spread_s: float = 0.0,
) -> list[float]:
    """Times to the first event of the streams ``concurrency`` closed-loop clients finished in
    ``seconds`` (after their starts, spread evenly over ``spread_s``: arrivals, not a burst)."""
    stop = time.perf_counter() + spread_s + seconds
    firsts: list[float] = []

    async def client(index: int) -> None:
        await asyncio.sleep(spread_s * index / concurrency)
        while time.perf_counter() < stop:
            firsts.append((await _stream_once(port, payload, first, end))[0])

    await asyncio.gather(*(client(index) for index in range(concurrency)))
    return firsts


async def _held_open(port: int, payload: bytes, count: int, pid: int) -> float:
    import psutil

    before = psutil.Process(pid).memory_info().rss
    tasks = [
        asyncio.create_task(_stream_once(port, payload, b"event: delta", b"event: done"))
        for _ in range(count)
    ]
    await asyncio.sleep(2.0)  # every stream started and is waiting on the provider's pacing
    during = psutil.Process(pid).memory_info().rss
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (during - before) / count


PACE_MS, PACED_PIECES = 50, 20  # a paced answer: 20 pieces, 50 ms apart (~1 s a stream)


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Every measurement of this part.

    Both apps run at once and are measured in alternating rounds (G, HS, G, HS, ...), so a
    machine that gets busier or quieter during the run moves both alike; each figure is the
    median over its rounds (times to the first event: over all requests of all rounds).
    """
    rounds, n, seconds = (3, 20, 1.0) if quick else (5, 40, 2.0)
    body = {"input": "Question: what is streaming, in a sentence or two?"}
    names = ("G", "HS")
    results: dict[str, Any] = {"apps": {}, "rounds": rounds}
    firsts: dict[str, list[float]] = {name: [] for name in names}
    loaded: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    provider_first: list[float] = []
    provider_text: list[float] = []
    with contextlib.ExitStack() as stack:
        provider = stack.enter_context(_procs.provider(0.0))
        port = int(provider.base_url.rsplit(":", 1)[1])
        apps = {name: stack.enter_context(_procs.app(name, provider.base_url)) for name in names}
        payloads = {name: _request(app.port, PATH, body) for name, app in apps.items()}
        for name, app in apps.items():  # warm up: imports, first connections, caches
            asyncio.run(_sequential(app.port, payloads[name], b"event: delta", b"event: done", 10))
            asyncio.run(_concurrent(app.port, payloads[name], concurrency=64, seconds=0.5))
        # streamed to the provider directly: the request the apps' LM sent (DSPy's prompt), so
        # the answer comes in the same chunks, the field header first
        direct = {**json.loads(provider.command("last_body")), "stream": True}
        provider_payload = _request(port, "/v1/chat/completions", direct)
        for _ in range(rounds):
            provider_first += asyncio.run(
                _sequential(port, provider_payload, b"data: {", b"data: [DONE]", n)
            )
            provider_text += asyncio.run(
                _sequential(port, provider_payload, field_text_arrived, b"data: [DONE]", n)
            )
            for name, app in apps.items():
                firsts[name] += asyncio.run(
                    _sequential(app.port, payloads[name], b"event: delta", b"event: done", n)
                )
            for name, app in apps.items():
                first_loaded = asyncio.run(
                    _concurrent(app.port, payloads[name], concurrency=64, seconds=seconds)
                )
                rates[name].append(len(first_loaded) / seconds)
                loaded[name] += first_loaded
        # 64 streams open at once, the provider pacing its answer: the worker is busy but
        # not saturated, as under chat traffic
        provider.command(f"chunk_delay {PACE_MS}")
        provider.command("reply " + "word " * PACED_PIECES)
        spread = PACE_MS * PACED_PIECES / 1000  # one paced stream's length
        paced_provider = asyncio.run(
            _concurrent(port, provider_payload, b"data: {", b"data: [DONE]", concurrency=64,
                        seconds=seconds, spread_s=spread)
        )  # fmt: skip
        paced_provider_text = asyncio.run(
            _concurrent(port, provider_payload, field_text_arrived, b"data: [DONE]",
                        concurrency=64, seconds=seconds, spread_s=spread)
        )  # fmt: skip
        paced = {
            name: asyncio.run(
                _concurrent(
                    app.port, payloads[name], concurrency=64, seconds=seconds, spread_s=spread
                )
            )
            for name, app in apps.items()
        }
        per_stream: dict[str, float] = {}
        provider.command("chunk_delay 200")
        provider.command("reply " + "word " * 100)
        for name, app in apps.items():
            per_stream[name] = asyncio.run(_held_open(app.port, payloads[name], 100, app.pid))
        provider.command("chunk_delay 0")
        provider.command("reply ")
    results["provider_first_ms"] = {
        "median": 1000 * statistics.median(provider_first),
        "p99": 1000 * _p(provider_first, 0.99),
        "paced_c64_p99": 1000 * _p(paced_provider, 0.99),
        "text_median": 1000 * statistics.median(provider_text),
        "text_p99": 1000 * _p(provider_text, 0.99),
        "paced_c64_text_p99": 1000 * _p(paced_provider_text, 0.99),
    }
    base = results["provider_first_ms"]["median"]
    base_text = results["provider_first_ms"]["text_median"]
    for name in names:
        results["apps"][name] = {
            "first_ms_median_c1": 1000 * statistics.median(firsts[name]),
            "first_ms_p99_c1": 1000 * _p(firsts[name], 0.99),
            "first_ms_over_provider_c1": 1000 * statistics.median(firsts[name]) - base,
            "first_ms_over_provider_text_c1": 1000 * statistics.median(firsts[name]) - base_text,
            "streams_per_s_c64": statistics.median(rates[name]),
            "streams_per_s_c64_rounds": rates[name],
            "first_ms_p99_c64": 1000 * _p(loaded[name], 0.99),
            "rss_kib_per_open_stream": per_stream[name] / 1024,
            "paced_c64_first_ms_p99": 1000 * _p(paced[name], 0.99),
            "paced_c64_first_ms_p99_over_provider": 1000
            * (_p(paced[name], 0.99) - _p(paced_provider, 0.99)),
            "paced_c64_first_ms_p99_over_provider_text": 1000
            * (_p(paced[name], 0.99) - _p(paced_provider_text, 0.99)),
            "paced_c64_streams": len(paced[name]),
        }
    g, hs = results["apps"]["G"], results["apps"]["HS"]
    results["streams_ratio_g_hs"] = g["streams_per_s_c64"] / hs["streams_per_s_c64"]
    results["paced_c64_p99_g_minus_hs_ms"] = (
        g["paced_c64_first_ms_p99"] - hs["paced_c64_first_ms_p99"]
    )
    results["streams_ratio_g_hs_rounds"] = [
        a / b for a, b in zip(rates["G"], rates["HS"], strict=True)
    ]
    return results


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
