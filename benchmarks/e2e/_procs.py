"""Starting, probing and stopping the benchmark's processes (provider, apps, load generator)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout_s: float = 60.0) -> None:
    """Return once ``port`` accepts connections (uvicorn listens after the lifespan startup)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def stop(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """Terminate ``process`` (SIGTERM, then SIGKILL) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_piped(process: subprocess.Popen[str]) -> None:
    """Close the stdin of a process driven over its pipes (it may exit on that), stop it and
    close its stdout."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    stop(process)
    if process.stdout is not None:
        process.stdout.close()


def ask(process: subprocess.Popen[str], line: str) -> str:
    """Send one line to a process driven over its pipes; the line it answers with."""
    stdin: IO[str] | None = process.stdin
    stdout: IO[str] | None = process.stdout
    assert stdin is not None
    assert stdout is not None
    stdin.write(f"{line}\n")
    stdin.flush()
    return stdout.readline()


@dataclass
class Provider:
    """The local provider process, with its latency switchable over stdin."""

    process: subprocess.Popen[str]
    base_url: str

    def set_latency(self, latency_ms: float) -> None:
        self.command(f"latency {latency_ms}")

    def command(self, line: str) -> str:
        """Send one command (``latency <ms>``, ``down``, ``up``, ``fired``); its answer after
        ``OK``."""
        answer = ask(self.process, line).strip()
        if answer.partition(" ")[0] != "OK":
            raise RuntimeError(f"provider refused {line!r}: {answer!r}")
        return answer.partition(" ")[2]


@contextlib.contextmanager
def provider(latency_ms: float = 0.0) -> Iterator[Provider]:
    """Run the local provider in its own process."""
    process = subprocess.Popen(
        [PYTHON, str(HERE / "provider.py"), "--latency-ms", str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"provider did not start: {line!r}")
        yield Provider(process, line.split(" ", 1)[1])
    finally:
        stop_piped(process)


@dataclass
class App:
    """One app served by uvicorn in its own process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid


def app_env(provider_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an app process: the provider URL, no proxies, nothing else new."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["LLM_SERVER_PROVIDER_URL"] = provider_url
    env.pop("OTEL_ENABLED", None)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def app(name: str, provider_url: str, *, extra_env: dict[str, str] | None = None) -> Iterator[App]:
    """Serve app ``name`` (see ``serve.py``) in its own process until the block ends."""
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, str(HERE / "serve.py"), name, "--port", str(port)],
        env=app_env(provider_url, extra_env),
    )
    try:
        wait_for_port(port, process)
        yield App(name, process, port)
    finally:
        stop(process)


def load(
    port: int,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None = None,
    requests: int | None = None,
    raw: bool = False,
    path: str | None = None,
    body: str | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Run the load generator in its own process and return its JSON result (open loop at
    ``rate`` requests per second when given)."""
    command = [
        PYTHON,
        str(HERE / "loadgen.py"),
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
    ]
    if server_pid is not None:
        command += ["--server-pid", str(server_pid)]
    if requests is not None:
        command += ["--requests", str(requests)]
    if raw:
        command.append("--raw")
    if path is not None:
        command += ["--path", path]
    if body is not None:
        command += ["--body", body]
    if rate is not None:
        command += ["--rate", str(rate)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@dataclass
class LoadGenerator:
    """The load generator kept running (``loadgen.py --serve``): its connections stay open
    from one load to the next, so loads can be short and many."""

    process: subprocess.Popen[str]

    def load(self, **load: Any) -> dict[str, Any]:
        """One load (``path``, ``body``, ``rate``, ``duration``, ``warmup``, ``raw``, ...);
        its JSON result."""
        line = ask(self.process, json.dumps(load))
        if not line:
            raise RuntimeError(f"the load generator exited with {self.process.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def reconnect(self) -> None:
        """Close the connections and open new ones (a server of several workers deals them
        out anew: each keeps the connections it accepted)."""
        if not ask(self.process, json.dumps({"reconnect": True})):
            raise RuntimeError(f"the load generator exited with {self.process.wait()}")


@contextlib.contextmanager
def load_generator(
    port: int, *, concurrency: int, server_pid: int | None = None, helper_pids: tuple[int, ...] = ()
) -> Iterator[LoadGenerator]:
    """Run ``loadgen.py --serve`` against ``port`` with ``concurrency`` connections (the CPU
    of ``server_pid``, and of ``helper_pids`` such as the provider, read around each window)."""
    command = [PYTHON, str(HERE / "loadgen.py"), "--serve", "--port", str(port),
               "--concurrency", str(concurrency)]  # fmt: skip
    if server_pid is not None:
        command += ["--server-pid", str(server_pid)]
    for pid in helper_pids:
        command += ["--helper-pid", str(pid)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield LoadGenerator(process)
    finally:
        stop_piped(process)


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)


def measure_cli(measure: Callable[..., dict[str, Any]], doc: str | None) -> None:
    """The command line of a benchmark part: ``[--quick]``, its JSON result on stdout."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    json.dump(measure(quick=args.quick), sys.stdout, indent=1)


REFERENCE_CONFIG = HERE.parent.parent / "examples" / "reference_app" / "config"


@contextlib.contextmanager
def serve_module(name: str, module: str, provider_url: str) -> Iterator[App]:
    """``e2e.apps.<module>:app`` under uvicorn, run from a temporary folder holding the
    reference config."""
    folder = Path(tempfile.mkdtemp(prefix=f"llm-server-bench-{name.lower()}-"))
    shutil.copytree(REFERENCE_CONFIG, folder / "config")
    port = free_port()
    # the caller's PYTHONPATH stays after ours, so a checkout's ``src`` is what gets measured
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH", "")) if p)
    env = app_env(provider_url, {"PYTHONPATH": path})
    command = [sys.executable, "-m", "uvicorn", f"e2e.apps.{module}:app", "--port", str(port),
               "--no-access-log", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, cwd=folder, env=env)
    try:
        wait_for_port(port, process)
        yield App(name, process, port)
    finally:
        stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def load_paths_abba(
    app: App,
    paths: dict[str, tuple[str, str]],
    *,
    concurrency: int,
    quick: bool,
    after: Callable[[str], None] | None = None,
    rate: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Load each of an app's paths in ABBA rounds (drift on a noisy machine hits all alike);
    each path's rounds pooled: throughput, p50, p99 and server CPU per request. ``after(name)``
    runs after each path's load (e.g. to let background work end before the next one); with
    ``rate``, each load is open-loop at that many requests per second."""
    rounds, window_s, warmup_s = (2, 2.0, 1.0) if quick else (4, 4.0, 1.5)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for index in range(rounds):
        order = list(paths) if index % 2 == 0 else list(reversed(paths))
        for name in order:
            path, body = paths[name]
            result = load(
                app.port,
                concurrency=concurrency,
                duration_s=window_s,
                warmup_s=warmup_s,
                server_pid=app.pid,
                path=path,
                body=body,
                rate=rate,
            )
            if result["errors"] or set(result["statuses"]) != {"200"}:
                raise RuntimeError(f"{name}: failed requests: {result['statuses']}")
            runs[name].append(result)
            if after is not None:
                after(name)
    pooled: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        completed = sum(r["completed"] for r in results)
        window = sum(r["window_s"] for r in results)
        cpu = sum(r["server_cpu_s"] or 0.0 for r in results)
        pooled[name] = {
            "throughput": round(completed / window, 1),
            "rounds": [round(r["throughput"], 1) for r in results],
            "p50_ms": round(sum(r["p50_ms"] for r in results) / len(results), 2),
            "p99_ms": round(max(r["p99_ms"] for r in results), 2),
            "cpu_ms_per_request": round(cpu / completed * 1000, 3) if completed else None,
        }
    return pooled


def rotated_orders(names: list[str], rounds: int) -> list[list[str]]:
    """Each round's order of ``names``: rotated by one every round, and reversed in every other
    cycle of ``len(names)`` rounds, so over ``2 x len(names)`` rounds each name holds each
    place, and follows each other name, equally often."""
    orders = []
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        orders.append(order[::-1] if (index // len(names)) % 2 else order)
    return orders


def load_rounds(
    generator: LoadGenerator | Mapping[str, LoadGenerator],
    paths: dict[str, tuple[str, str]],
    *,
    rounds: int,
    window_s: float,
    warmup_s: float,
    rate: float | None = None,
    after: Callable[[str], None] | None = None,
) -> list[dict[str, dict[str, Any]]]:
    """Load each path once per round, in :func:`rotated_orders`, over the generator's open
    connections (a warm-up of ``warmup_s`` lets the previous path's requests drain and the
    queue fill again, then a window of ``window_s``); per round, each path's load result with
    its latencies (``latencies_ms``). With a mapping of generators, each path's loads go to
    its own (one per app: apps compared rather than paths of one app). ``after(name)`` runs
    after each path's load (e.g. to let background work end before the next one); with
    ``rate``, each load is open-loop at that many requests per second."""
    results: list[dict[str, dict[str, Any]]] = []
    for order in rotated_orders(list(paths), rounds):
        loads: dict[str, dict[str, Any]] = {}
        for name in order:
            path, body = paths[name]
            loader = generator if isinstance(generator, LoadGenerator) else generator[name]
            result = loader.load(
                path=path, body=body, duration=window_s, warmup=warmup_s, rate=rate, raw=True
            )
            if result["errors"] or set(result["statuses"]) != {"200"}:
                raise RuntimeError(f"{name}: failed requests: {result['statuses']}")
            loads[name] = result
            if after is not None:
                after(name)
        results.append(loads)
    return results
