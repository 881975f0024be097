"""CPU time per call: ``DSPyBackend.predict`` vs a bare ``Predict.acall``, on both DSPy engines.

The local provider runs in a subprocess on 127.0.0.1, so the CPU time measured here (the whole
benchmark process: event loop plus the worker threads DSPy hops through) is the client's only.
For each engine the two variants alternate in rounds, so machine noise hits both alike; the
report gives the median CPU time per call and the ratio backend / bare from the same run.

    .venv/bin/python benchmarks/bench_backend.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from llm_server._offline import ensure_offline

ensure_offline()

import dspy  # noqa: E402 -- after ensure_offline() on purpose

from llm_server.core.model_config import ModelsConfig  # noqa: E402
from llm_server.models.manager import ModelManager  # noqa: E402


class _Config:
    def __init__(self, config: ModelsConfig) -> None:
        self.config = config

    def load(self) -> ModelsConfig:
        return self.config


@contextlib.contextmanager
def _provider_process() -> Iterator[str]:
    """Run ``python -m llm_server.testing`` on a free port; yield its OpenAI api_base."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_server.testing", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the local provider did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(10)


async def _cpu_per_call(call: Callable[[int], Awaitable[Any]], calls: int) -> float:
    """Process CPU milliseconds per call, calls made one after another."""
    started = time.process_time()
    for index in range(calls):
        await call(index)
    return (time.process_time() - started) / calls * 1000


async def _bench_engine(
    manager: ModelManager, model_id: str, *, calls: int, rounds: int
) -> tuple[float, float]:
    program = dspy.Predict("question -> answer")
    backend = manager.single_attempt_backend(program, model_id)
    lm = manager.get_lm(model_id)
    bare_program = dspy.Predict("question -> answer")

    async def bare(index: int) -> Any:
        # What a hand-written endpoint would do: the model set per call, nothing else.
        with dspy.context(lm=lm):
            return await bare_program.acall(question=f"q{index}")

    async def ours(index: int) -> Any:
        return await backend.predict({"question": f"q{index}"})

    for warm in (bare, ours):  # first calls pay lazy imports and connection setup
        for index in range(20):
            await warm(index)
    bare_ms: list[float] = []
    ours_ms: list[float] = []
    for _ in range(rounds):
        bare_ms.append(await _cpu_per_call(bare, calls))
        ours_ms.append(await _cpu_per_call(ours, calls))
    return statistics.median(bare_ms), statistics.median(ours_ms)


async def main(calls: int, rounds: int) -> None:
    with _provider_process() as api_base:
        config = ModelsConfig.model_validate(
            {
                "models": {
                    engine: {
                        "model_name": "openai/gpt-4o-mini",
                        "engine": engine,
                        "api_base": api_base,
                    }
                    for engine in ("auto", "litellm")
                }
            }
        )
        manager = ModelManager(config_provider=_Config(config), environ={})
        print(f"{calls} sequential calls x {rounds} rounds per variant; median CPU ms per call")
        print(f"{'engine':<10}{'bare acall':>12}{'DSPyBackend':>13}{'ratio':>8}")
        for model_id in manager.model_ids:
            bare_ms, ours_ms = await _bench_engine(manager, model_id, calls=calls, rounds=rounds)
            engine = manager.model_info[model_id].engine
            print(f"{engine:<10}{bare_ms:>12.2f}{ours_ms:>13.2f}{ours_ms / bare_ms:>8.2f}")
        await manager.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round and variant")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
