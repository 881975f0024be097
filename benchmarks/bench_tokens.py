"""Throughput of ``count_message_tokens`` against ``litellm.token_counter`` on the same messages.

Run: ``.venv/bin/python benchmarks/bench_tokens.py [--rounds N] [--model NAME]``.

Each message list is a DSPy ChatAdapter prompt (system + user message, ~0.6 kB) whose user text
is different for every list, so neither side gains from caching a repeated string. Both counters
are warmed up first (encodings loaded), then timed alternately over the same lists, several
rounds, best round kept. Prints calls/s for each and the ratio (ours / LiteLLM; >= 1.0 means we
are not slower).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from llm_server._offline import ensure_offline

ensure_offline()

Messages = list[dict[str, Any]]


def build_messages(count: int) -> list[Messages]:
    """``count`` distinct DSPy-formatted prompts."""
    import dspy

    adapter = dspy.ChatAdapter()
    signature = dspy.Signature("question, context -> answer, confidence: float")
    return [
        adapter.format(
            signature,
            demos=[],
            inputs={
                "question": f"Question number {index}: what is {index} plus {index * 7}?",
                "context": f"Context {index}. " + "Some supporting sentence. " * (index % 9 + 1),
            },
        )
        for index in range(count)
    ]


def calls_per_second(count: Callable[[Messages], int], corpus: Sequence[Messages]) -> float:
    """Calls per second of ``count`` over ``corpus``."""
    started = time.perf_counter()
    for messages in corpus:
        count(messages)
    return len(corpus) / (time.perf_counter() - started)


def main() -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import litellm

    from llm_server.core.tokens import count_message_tokens

    model: str = args.model
    corpus = build_messages(args.messages)

    def ours(messages: Messages) -> int:
        return count_message_tokens(messages, model)

    def theirs(messages: Messages) -> int:
        return int(litellm.token_counter(model=model, messages=messages))

    mismatches = sum(ours(m) != theirs(m) for m in corpus)  # also warms both up
    best_ours = best_theirs = 0.0
    for _ in range(args.rounds):
        best_theirs = max(best_theirs, calls_per_second(theirs, corpus))
        best_ours = max(best_ours, calls_per_second(ours, corpus))
    print(f"model={model} message lists={len(corpus)} rounds={args.rounds}")
    print(f"count mismatches vs litellm: {mismatches}")
    print(f"llm_server count_message_tokens: {best_ours:10.0f} calls/s")
    print(f"litellm.token_counter:           {best_theirs:10.0f} calls/s")
    print(f"throughput ratio (ours/litellm): {best_ours / best_theirs:.2f}")


if __name__ == "__main__":
    main()
