"""Helpers shared by the model-layer tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm_server.models.manager import ModelManager

ENGINES = ("auto", "litellm")
MODEL_NAMES = {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-sonnet-4-5"}
ENGINE_PROTOCOLS = [(engine, protocol) for engine in ENGINES for protocol in MODEL_NAMES]
"""Each wire protocol on each DSPy engine."""


def model(protocol: str, engine: str, **extra: Any) -> dict[str, Any]:
    """One model's YAML for ``protocol`` on ``engine``."""
    return {"model_name": MODEL_NAMES[protocol], "engine": engine, **extra}


MakeManager = Callable[..., ModelManager]
"""The ``make_manager`` fixture: ``make_manager(models, *, environ=None, **settings)``."""
