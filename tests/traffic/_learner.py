"""A scripted provider reply that learns from few-shot demos, for the re-optimization tests.

The truth: ``positive`` when the text says "good", else ``negative``. Without demos the model
is right on short texts (under 20 characters) and wrong on long ones; with demos it answers
what the demos of the same kind (saying "good" or not) say, so demos with the right labels
make it right everywhere, and demos with wrong labels make it wrong.
"""

from __future__ import annotations

import re
from typing import Any

import dspy

from llm_server.testing import RecordedRequest


class Sentiment(dspy.Signature):
    """Label the sentiment of the text."""

    text: str = dspy.InputField()
    label: str = dspy.OutputField()


def truth(text: str) -> str:
    return "positive" if "good" in text else "negative"


def _field(content: str, name: str) -> str | None:
    found = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n|\n\[\[|$)", content, re.S)
    return found.group(1).strip() if found else None


def learner(request: RecordedRequest) -> dict[str, Any]:
    messages = request.body["messages"]
    text = _field(messages[-1]["content"], "text") or ""
    votes: dict[str, int] = {}
    for user, assistant in zip(messages[1:-1:2], messages[2:-1:2], strict=False):
        demo_text, demo_label = (
            _field(user["content"], "text"),
            _field(assistant["content"], "label"),
        )
        if demo_text is not None and demo_label and ("good" in demo_text) == ("good" in text):
            votes[demo_label] = votes.get(demo_label, 0) + 1
    if votes:
        return {"label": max(votes, key=lambda label: votes[label])}
    right = truth(text)
    wrong = "negative" if right == "positive" else "positive"
    return {"label": right if len(text) < 20 else wrong}


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.label == prediction.label)
