"""The local test provider in a process of its own, for the end-to-end benchmarks.

    python benchmarks/e2e/provider.py [--latency-ms 0]

Prints ``READY <base_url>`` once listening, then reads commands on stdin, one per line:
``latency <ms>`` sets the latency added to every answer, ``chunk_delay <ms>`` the pause
between the events of a streamed answer, ``reply <text>`` a fixed answer, ``down`` makes every
request fail with a 503 (an outage), ``up`` ends it (each answers ``OK``), ``fired`` answers
``OK <n>``: the requests the current outage failed; ``last_body`` answers ``OK <json>``: the
body of the last request it got, on one line; end of input stops it.
"""

from __future__ import annotations

import argparse
import json
import sys

from llm_server.testing import LocalProvider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    # max_recorded: keep a few requests only; the benchmark never reads them.
    with LocalProvider(latency_s=args.latency_ms / 1000, max_recorded=16) as provider:
        print(f"READY {provider.base_url}", flush=True)
        outage = None
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "latency":
                provider.latency_s = float(value) / 1000
                print("OK", flush=True)
            elif command == "chunk_delay":
                provider.chunk_delay_s = float(value) / 1000
                print("OK", flush=True)
            elif command == "reply":
                provider.script(reply=value.replace("\\n", "\n") or None)
                print("OK", flush=True)
            elif command == "down":
                outage = provider.add_fault("unavailable")
                print("OK", flush=True)
            elif command == "up":
                provider.clear_faults()
                print("OK", flush=True)
            elif command == "fired":
                print(f"OK {provider.fired(outage) if outage is not None else 0}", flush=True)
            elif command == "last_body":
                body = provider.requests[-1].body if provider.requests else None
                print(f"OK {json.dumps(body)}", flush=True)
            elif command:
                print(f"ERROR unknown command {command!r}", flush=True)


if __name__ == "__main__":
    main()
