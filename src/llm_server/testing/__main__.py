"""Run the local test provider in the foreground: ``python -m llm_server.testing --help``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import get_args

from llm_server.testing._provider import FaultKind, LocalProvider


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llm_server.testing",
        description="A local OpenAI/Anthropic-compatible server answering in DSPy's format.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (8001; 0 picks a free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--no-usage", action="store_true", help="omit the usage block")
    parser.add_argument("--reply", help="answer every output field with this text (default: echo)")
    parser.add_argument("--fault", choices=sorted(get_args(FaultKind)), help="inject this fault")
    parser.add_argument(
        "--fault-rate", type=float, default=1.0, help="probability of --fault per request (1.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault RNG (0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit status."""
    args = _parser().parse_args(argv)
    provider = LocalProvider(
        host=args.host,
        port=args.port,
        reply=args.reply,
        latency_s=args.latency_ms / 1000,
        usage=not args.no_usage,
        seed=args.seed,
        max_recorded=1000,  # a long-running server must not grow without bound
    )
    if args.fault:
        provider.add_fault(args.fault, probability=args.fault_rate if args.fault_rate < 1 else None)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with provider:
        print(f"LocalProvider listening on {provider.base_url}", flush=True)
        print(f"  OpenAI api_base:    {provider.openai_api_base}", flush=True)
        print(f"  Anthropic api_base: {provider.anthropic_api_base}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        done.wait()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
