"""Start-up: ``import llm_server`` time, time to ready with four models and two programs, RSS.

    python benchmarks/e2e/startup.py [--quick]

Every figure comes from fresh interpreters. "Ready" is the end of the FastAPI lifespan's
startup (``llm_server_lifespan``: settings, YAML, four ``dspy.LM`` built, program storage,
two programs registered), timed from just before the process was spawned, so interpreter
start-up and every import count. An audit hook installed before any import records every
``socket.connect``/``getaddrinfo``/``sendto`` to a non-loopback address; there must be none.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")
_NETWORK_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "socket.sendto"})

CONFIG = """\
models:
  gpt-4o-mini:
    model_name: "openai/gpt-4o-mini"
    max_tokens: 3000
    api_base: "http://127.0.0.1:9/v1"
  gpt-4o:
    model_name: "openai/gpt-4o"
    max_tokens: 4000
    api_base: "http://127.0.0.1:9/v1"
  claude-3.5-sonnet:
    model_name: "anthropic/claude-3-5-sonnet-20241022"
    max_tokens: 4000
    api_base: "http://127.0.0.1:9/v1"
  claude-3-haiku:
    model_name: "anthropic/claude-3-haiku-20240307"
    max_tokens: 4000
    api_base: "http://127.0.0.1:9/v1"{litellm}
"""


def _install_network_audit() -> list[str]:
    """Record connections to anything but loopback (installed before any other import)."""
    seen: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _NETWORK_EVENTS:
            return
        address = args[1] if event != "socket.getaddrinfo" else args[0]
        host = address[0] if isinstance(address, tuple) and address else address
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if isinstance(host, str) and (host.startswith(_LOOPBACK) or host.startswith("/")):
            return
        if host is None or (isinstance(host, str) and not host):
            return
        seen.append(f"{event} {address!r}")

    sys.addaudithook(hook)
    return seen


def child() -> None:
    """Build the app, run its lifespan startup, print when it was ready and the RSS."""
    seen = _install_network_audit()
    import asyncio

    import dspy
    import psutil
    from fastapi import FastAPI

    from llm_server.fastapi import llm_server_lifespan
    from llm_server.models.predictor import Predictor

    class Answer(dspy.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.think = dspy.ChainOfThought("question -> answer")

        async def aforward(self, question: str) -> Any:
            return await self.think.acall(question=question)

    lifespan = llm_server_lifespan(programs=[(Predictor, "Text Completion"), (Answer, "QA")])
    app = FastAPI(lifespan=lifespan)

    async def start() -> float:
        async with app.router.lifespan_context(app):
            return time.time()

    ready_at = asyncio.run(start())
    rss = psutil.Process().memory_info().rss / (1024 * 1024)
    loaded = {name: name in sys.modules for name in ("dspy", "litellm", "opentelemetry.sdk")}
    print(json.dumps({"ready_at": ready_at, "rss_mib": rss, "network": seen, "loaded": loaded}))


def import_time(runs: int) -> dict[str, Any]:
    """Median seconds of ``import llm_server`` in fresh interpreters, and what it pulled in."""
    code = (
        "import sys, time, json; t = time.perf_counter(); import llm_server; "
        "d = time.perf_counter() - t; "
        "print(json.dumps([d, 'dspy' in sys.modules, 'litellm' in sys.modules]))"
    )
    times: list[float] = []
    heavy = False
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        seconds, dspy_loaded, litellm_loaded = json.loads(out.stdout)
        times.append(seconds)
        heavy = heavy or dspy_loaded or litellm_loaded
    return {"median_s": statistics.median(times), "runs": runs, "imports_dspy_or_litellm": heavy}


def time_to_ready(runs: int, *, litellm_model: bool) -> dict[str, Any]:
    """Median seconds from spawning a process to the end of its lifespan startup."""
    extra = (
        '\n  mistral-small:\n    model_name: "mistral/mistral-small-latest"\n'
        '    max_tokens: 2000\n    api_base: "http://127.0.0.1:9/v1"\n    api_key: "test"'
    )
    readies: list[float] = []
    rss: list[float] = []
    network: list[str] = []
    loaded: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "model_config.yml"
        text = CONFIG.format(litellm="")
        if litellm_model:  # the fourth model on LiteLLM: LiteLLM is imported at startup
            text = text.split("  claude-3-haiku:")[0].rstrip() + extra + "\n"
        config.write_text(text)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(
            LLM_CONFIG_PATH=str(config),
            LLM_PROGRAMS_DIR=str(Path(folder) / "programs"),
            OPENAI_API_KEY="test",
            ANTHROPIC_API_KEY="test",
        )
        for _ in range(runs):
            spawned = time.time()
            out = subprocess.run(
                [sys.executable, __file__, "--child"],
                check=False,
                capture_output=True,
                env=env,
                cwd=folder,
            )
            if out.returncode:
                raise RuntimeError(f"start-up child failed:\n{out.stderr.decode()[-3000:]}")
            result = json.loads(out.stdout.decode().strip().splitlines()[-1])
            readies.append(result["ready_at"] - spawned)
            rss.append(result["rss_mib"])
            network.extend(result["network"])
            loaded = result["loaded"]
    return {
        "median_s": statistics.median(readies),
        "rss_mib": statistics.median(rss),
        "runs": runs,
        "network": sorted(set(network)),
        "loaded_at_ready": loaded,
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Every start-up figure."""
    runs = 3 if quick else 7
    return {
        "import": import_time(runs),
        "ready": time_to_ready(max(2, runs // 2), litellm_model=False),
        "ready_litellm": time_to_ready(2 if quick else 3, litellm_model=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    json.dump(measure(quick=args.quick), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
