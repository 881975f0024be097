"""A small, fast HTTP/1.1 load generator: keep-alive connections on raw asyncio streams.

Run in its own process (the harness does), so its CPU never counts against the server::

    python benchmarks/e2e/loadgen.py --port 8000 --concurrency 64 --duration 5 --warmup 2

Each of ``--concurrency`` connections sends one request at a time (closed loop; with
``--rate``, at fixed times that add up to that many requests per second: open loop) with a
distinct prompt per request (nothing can be served from a cache), and reads the answer by its
``Content-Length`` (or chunked encoding). After ``--warmup`` seconds of the same load, the
measured window runs for ``--duration`` seconds or ``--requests`` requests, whichever comes
first; the requests that complete inside the window count (as ``wrk`` counts them), with
their whole latency even if they were sent before it opened. With ``--server-pid`` the CPU
time that process and its children (those still running, such as the workers of ``uvicorn
--workers N``, and those ended) used inside the window is read with psutil.

``throughput`` is that count over the window. ``throughput_credit`` counts each answered
request for the share of its time spent inside the window (1 for one sent and answered in
it; the requests in flight at the window's edges in part): it does not depend on where the
edges fall in a connection's cycle, which the count does by up to one request per connection
(at c=1 and 200 ms, a 4 s window holds 19 or 20 answers whatever the server's speed: +-5 %).

Prints one JSON object: completed, errors, window seconds, throughput, latency percentiles
(ms), and the server's CPU seconds. An ``httpx.AsyncClient`` tops out at a few hundred
requests per second on these machines; this client costs ~50 us of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BODY_TEMPLATE = '{{"prompt": "Question {n}: what is {n} plus {n}?", "model_id": "gpt-4o-mini"}}'


@dataclass(slots=True)
class _Window:
    """The measured window: opened after the warm-up, closed at the deadline or count."""

    start: float = 0.0
    end: float = float("inf")
    open: bool = False
    latencies: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)  # seconds into the window
    # answered requests' shares of their time inside the window, summed (throughput_credit)
    credit: float = 0.0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    max_requests: int | None = None


def _server_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil

    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    # the children still running count too: the workers of ``uvicorn --workers N``
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return float(total)


def _busy_cpu() -> tuple[float, float]:
    """CPU seconds every process on the machine, and this one, have used so far."""
    import psutil

    total = psutil.cpu_times()
    own = psutil.Process().cpu_times()
    busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
    return busy, own.user + own.system


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if not chunked:
        raise ConnectionError("response without Content-Length or chunked encoding")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connection(
    args: argparse.Namespace,
    counter: list[int],
    window: _Window,
    stop_at: list[float],
    index: int,
    *,
    connections: list[_Connection],
) -> None:
    host, port, template = args.host, args.port, args.body
    reader, writer = connections[index]
    first = True
    head = f"POST {args.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    # Open loop (--rate): this connection sends every `interval` s, the connections' sends
    # spread evenly, and a latency counts from the scheduled send (a late server is not
    # excused by sending later: no coordinated omission)
    interval = args.concurrency / args.rate if args.rate else 0.0
    scheduled = time.perf_counter() + interval * index / max(args.concurrency, 1)
    while time.perf_counter() < stop_at[0]:
        counter[0] += 1
        body = template.format(n=counter[0]).encode()
        request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        if interval:
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            if scheduled >= stop_at[0]:  # due after the window: not sent
                break
            started, scheduled = scheduled, scheduled + interval
        else:
            started = time.perf_counter()
        writer.write(request)
        try:
            status, _ = await _read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not first:
                raise
            # the server closed the connection while it idled between loads (uvicorn's
            # keep-alive timeout is 5 s): open it again and send once more
            writer.close()
            reader, writer = connections[index] = await asyncio.open_connection(host, port)
            writer.write(request)
            status, _ = await _read_response(reader)
        first = False
        finished = time.perf_counter()
        if window.open and window.start <= finished <= window.end:
            window.statuses[status] = window.statuses.get(status, 0) + 1
            if status == 200:
                window.latencies.append(finished - started)
                window.finished.append(finished - window.start)
                window.credit += (finished - max(started, window.start)) / (finished - started)
            else:
                window.errors += 1
            if (
                window.max_requests is not None
                and len(window.latencies) + window.errors >= window.max_requests
            ):
                window.end = finished
                stop_at[0] = finished
        elif window.open and status == 200 and max(started, window.start) < window.end < finished:
            # answered after the window closed: the part of it inside the window counts
            window.credit += (window.end - max(started, window.start)) / (finished - started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Open the connections, warm up, run the measured window, and return the results."""
    connections = await _open(args)
    try:
        return await _measure(args, connections, [0])
    finally:
        await _close(connections)


async def _open(args: argparse.Namespace) -> list[_Connection]:
    return [await asyncio.open_connection(args.host, args.port) for _ in range(args.concurrency)]


async def _close(connections: list[_Connection]) -> None:
    for _, writer in connections:
        writer.close()
    for _, writer in connections:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _measure(
    args: argparse.Namespace, connections: list[_Connection], counter: list[int]
) -> dict[str, Any]:
    """One load on open ``connections``: the warm-up, then the measured window."""
    window = _Window(max_requests=args.requests)
    stop_at = [float("inf")]
    tasks = [
        asyncio.create_task(
            _connection(args, counter, window, stop_at, index, connections=connections)
        )
        for index in range(len(connections))
    ]
    await asyncio.sleep(args.warmup)
    cpu_before = _server_cpu(args.server_pid)
    helpers_before = sum(_server_cpu(pid) or 0.0 for pid in args.helper_pid or ())
    busy_before = _busy_cpu()
    window.start = time.perf_counter()
    window.open = True
    deadline = window.start + args.duration
    while time.perf_counter() < deadline and window.end == float("inf"):
        done = [t for t in tasks if t.done()]
        if done:  # a connection failed: surface its exception
            for task in done:
                task.result()
        await asyncio.sleep(0.02)
    if window.end == float("inf"):
        window.end = time.perf_counter()
    stop_at[0] = window.end
    cpu_after = _server_cpu(args.server_pid)
    helpers_after = sum(_server_cpu(pid) or 0.0 for pid in args.helper_pid or ())
    busy_after = _busy_cpu()
    # In-flight requests finish outside the window and are not counted; give them time.
    _, pending = await asyncio.wait(tasks, timeout=args.drain_timeout)
    for task in pending:
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if pending:  # a connection still waits for its answer: it cannot carry the next load
        raise TimeoutError(
            f"{len(pending)} requests unanswered {args.drain_timeout} s after the window"
        )
    elapsed = window.end - window.start
    completed = len(window.latencies)
    ms = [x * 1000 for x in window.latencies]
    return {
        "concurrency": args.concurrency,
        "completed": completed,
        "errors": window.errors,
        "statuses": {str(k): v for k, v in sorted(window.statuses.items())},
        "window_s": elapsed,
        "throughput": completed / elapsed if elapsed > 0 else 0.0,
        "throughput_credit": window.credit / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms) if ms else float("nan"),
        "server_cpu_s": (
            None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        ),
        # the CPU every process on the machine used in the window, and this one's: what else
        # ran (another benchmark, a test run) is the rest, less the server's and its helpers'
        "machine_cpu_s": busy_after[0] - busy_before[0],
        "loadgen_cpu_s": busy_after[1] - busy_before[1],
        "helpers_cpu_s": helpers_after - helpers_before,
        **(
            {
                "latencies_ms": [round(x, 3) for x in ms],
                "finished_s": [round(x, 4) for x in window.finished],
            }
            if args.raw
            else {}
        ),
    }


async def serve(args: argparse.Namespace) -> None:
    """Keep ``--concurrency`` connections open and run one load per line of JSON on stdin
    (any of path, body, rate, duration, warmup, requests, server_pid, raw; the rest from the
    command line), printing each result as one line of JSON; end of input ends it. The line
    ``{"reconnect": true}`` closes the connections and opens new ones instead (a server of
    several workers then deals them out anew) and answers ``{"connections": N}``."""
    loop = asyncio.get_running_loop()
    connections = await _open(args)
    counter = [0]  # one count across the loads: every prompt stays distinct
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command.get("reconnect"):
                await _close(connections)
                connections[:] = await _open(args)
                json.dump({"connections": len(connections)}, sys.stdout)
                sys.stdout.write("\n")
                sys.stdout.flush()
                continue
            load = argparse.Namespace(**{**vars(args), **command})
            json.dump(await _measure(load, connections, counter), sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
    finally:
        await _close(connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", default=BODY_TEMPLATE, help="str.format template with {n}")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--rate", type=float, help="open loop: requests per second in all (default: closed)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="window seconds (at most)")
    parser.add_argument("--requests", type=int, help="end the window after this many requests")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before it")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument(
        "--helper-pid", type=int, action="append", help="a process serving the server (CPU)"
    )
    parser.add_argument(
        "--raw", action="store_true", help="include every latency (ms) and when it ended (s)"
    )
    parser.add_argument(
        "--serve", action="store_true", help="one load per JSON line on stdin (see serve())"
    )
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load generator only targets loopback")
    main_: Any = serve(args) if args.serve else run(args)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_)
    else:
        result = uvloop.run(main_)
    if not args.serve:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
