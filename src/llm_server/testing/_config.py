"""A configuration provider holding its models in memory (no YAML file)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_server.core.model_config import ModelsConfig

__all__ = ["StaticConfigProvider"]


class StaticConfigProvider:
    """A :class:`~llm_server.core.protocols.ConfigProvider` built from a dict, for tests.

    The dict is what the YAML's ``models:`` key would hold, validated by the same schema::

        provider = StaticConfigProvider({"gpt-4o-mini": {"model_name": "openai/gpt-4o-mini"}})
        manager = ModelManager(config_provider=provider, settings=settings)

    Args:
        models: Model id -> the model's keys.
        budgets: The YAML's ``budgets:`` (tenant id -> ``per_day``/``per_month`` limits).

    Raises:
        pydantic.ValidationError: The models do not match the schema.
    """

    def __init__(self, models: Mapping[str, Any], *, budgets: Mapping[str, Any] | None = None):
        self.config = ModelsConfig.model_validate(
            {"models": dict(models), "budgets": dict(budgets or {})}
        )

    def load(self) -> ModelsConfig:
        """Return the configuration."""
        return self.config
