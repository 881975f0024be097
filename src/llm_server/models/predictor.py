"""The basic DSPy signature: one text input, one text output.

Importing this module imports DSPy (``import llm_server`` alone does not).
"""

from __future__ import annotations

from llm_server._offline import ensure_offline

ensure_offline()

import dspy  # noqa: E402  (ensure_offline must run before DSPy is imported)

__all__ = ["Predictor"]


class Predictor(dspy.Signature):  # type: ignore[misc]  # dspy ships no type information
    """Respond to the input."""

    input: str = dspy.InputField()
    output: str = dspy.OutputField()
