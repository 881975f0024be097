"""Helpers shared by the model-layer tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from llm_server.core.model_config import ModelsConfig
from llm_server.models.manager import ModelManager

ENGINES = ("auto", "litellm")
MODEL_NAMES = {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-sonnet-4-5"}
ENGINE_PROTOCOLS = [(engine, protocol) for engine in ENGINES for protocol in MODEL_NAMES]
"""Each wire protocol on each DSPy engine."""


class StaticConfig:
    """A ConfigProvider holding an in-memory configuration."""

    def __init__(self, models: Mapping[str, Mapping[str, Any]]) -> None:
        self.config = ModelsConfig.model_validate({"models": dict(models)})

    def load(self) -> ModelsConfig:
        return self.config


def model(protocol: str, engine: str, **extra: Any) -> dict[str, Any]:
    """One model's YAML for ``protocol`` on ``engine``."""
    return {"model_name": MODEL_NAMES[protocol], "engine": engine, **extra}


MakeManager = Callable[..., ModelManager]
"""The ``make_manager`` fixture: ``make_manager(models, *, environ=None, **settings)``."""
