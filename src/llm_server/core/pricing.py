"""Model prices and context windows, from LiteLLM's bundled map or the YAML ``pricing`` override.

LiteLLM ships ``model_prices_and_context_window_backup.json`` inside its package. This module
reads that file directly (about 20 ms, once) instead of importing LiteLLM (seconds, ~190 MiB),
so prices and context windows are known offline, at startup, for every engine. The lookup
follows LiteLLM's own: the full ``provider/model`` key first, then the bare model name when the
entry belongs to the same provider.

An unknown price is ``None``, never a guess: a cost computed from it would be a lie.

Example::

    from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage
    from llm_server.core.pricing import resolve_price

    price = resolve_price("openai/gpt-4o-mini")
    usage = TokenUsage(1000, 500, 1500, TokenCountMethod.EXACT)
    price.cost_usd(usage) if price else None  # 0.00045
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from llm_server._offline import litellm_package_dir
from llm_server.core.model_config import PricingConfig
from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage

__all__ = ["ModelCatalogEntry", "ModelPrice", "cost_usd", "lookup_model", "resolve_price"]

logger = logging.getLogger(__name__)

_PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"
_PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in USD per million tokens.

    Attributes:
        input_per_million: Price of prompt tokens.
        output_per_million: Price of completion tokens.
        cached_input_per_million: Price of prompt tokens served from the provider's prompt
            cache; ``None`` bills them as ordinary prompt tokens.
        source: ``"config"`` for a YAML override, ``"litellm"`` for LiteLLM's bundled map.
    """

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None
    source: Literal["config", "litellm"] = "litellm"

    def cost_usd(self, usage: TokenUsage) -> float:
        """The cost of ``usage`` in USD (0.0 for a cache hit: nothing was billed)."""
        if usage.method is TokenCountMethod.CACHED:
            return 0.0
        cached = usage.cached_input_tokens or 0
        if self.cached_input_per_million is None:
            cached = 0
        uncached = max(usage.input_tokens - cached, 0)
        total = (
            uncached * self.input_per_million
            + cached * (self.cached_input_per_million or 0.0)
            + usage.output_tokens * self.output_per_million
        )
        return total / _PER_MILLION

    @classmethod
    def from_config(cls, pricing: PricingConfig) -> ModelPrice:
        """The price a YAML ``pricing`` block declares."""
        return cls(
            input_per_million=pricing.input_per_million,
            output_per_million=pricing.output_per_million,
            cached_input_per_million=pricing.cached_input_per_million,
            source="config",
        )


@dataclass(frozen=True, slots=True)
class ModelCatalogEntry:
    """What LiteLLM's bundled map knows about one model.

    Attributes:
        key: The map's key for the model (e.g. ``gpt-4o-mini``).
        price: Its price, or ``None`` when the map lists no token prices.
        context_window: Maximum prompt tokens (``max_input_tokens``), if listed.
        max_output_tokens: Maximum completion tokens, if listed.
    """

    key: str
    price: ModelPrice | None
    context_window: int | None
    max_output_tokens: int | None


@functools.cache
def _price_map() -> dict[str, Any]:
    package = litellm_package_dir()
    if package is None:
        return {}
    path = package / _PRICE_MAP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        # Prices become unknown (cost_usd None), which is honest; requests still work.
        logger.warning("cannot read LiteLLM's price map %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _per_million(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value) * _PER_MILLION
    return None


def _entry(key: str, raw: dict[str, Any]) -> ModelCatalogEntry:
    input_price = _per_million(raw.get("input_cost_per_token"))
    output_price = _per_million(raw.get("output_cost_per_token"))
    price = None
    if input_price is not None and output_price is not None:
        price = ModelPrice(
            input_per_million=input_price,
            output_per_million=output_price,
            cached_input_per_million=_per_million(raw.get("cache_read_input_token_cost")),
        )
    return ModelCatalogEntry(
        key=key,
        price=price,
        context_window=_as_int(raw.get("max_input_tokens")),
        max_output_tokens=_as_int(raw.get("max_output_tokens")),
    )


@functools.cache
def lookup_model(model_name: str) -> ModelCatalogEntry | None:
    """What LiteLLM's bundled map knows about ``model_name`` (``provider/model``), if anything."""
    table = _price_map()
    provider, _, bare = model_name.partition("/")
    raw = table.get(model_name)
    if isinstance(raw, dict):
        return _entry(model_name, raw)
    raw = table.get(bare)
    # The bare name only counts when the entry is the same provider's model: "gpt-4o-mini"
    # priced for "openai/" must not price "openrouter/gpt-4o-mini".
    if isinstance(raw, dict) and str(raw.get("litellm_provider", "")).startswith(provider):
        return _entry(bare, raw)
    return None


def resolve_price(model_name: str, *, override: PricingConfig | None = None) -> ModelPrice | None:
    """The price of ``model_name``: the YAML override, else LiteLLM's map, else ``None``."""
    if override is not None:
        return ModelPrice.from_config(override)
    entry = lookup_model(model_name)
    return entry.price if entry is not None else None


def cost_usd(usage: TokenUsage | None, price: ModelPrice | None) -> float | None:
    """The cost of ``usage`` at ``price``; ``None`` when either is unknown."""
    if usage is None or price is None or usage.method is TokenCountMethod.UNAVAILABLE:
        return None
    return price.cost_usd(usage)
