"""What the model manager does once at startup besides building the LMs.

Importing LiteLLM (when a model uses it, so no request pays for it), DSPy's cache setting,
the default telemetry, the fleet's connection (``LLM_SERVER_REDIS_URL``), each model's
context window, and the shared response caches in the fleet's Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError
from llm_server.core.model_config import ModelConfig, ModelsConfig
from llm_server.core.pricing import lookup_model
from llm_server.core.telemetry._otel import Telemetry, get_telemetry, set_telemetry
from llm_server.models._engine import ResolvedKey

if TYPE_CHECKING:
    from llm_server.fleet import Fleet

__all__ = [
    "configure_dspy_cache",
    "connect_fleet",
    "context_window",
    "default_telemetry",
    "import_litellm",
    "share_caches",
]


def import_litellm() -> None:
    import importlib
    import warnings

    with warnings.catch_warnings():
        # LiteLLM's own import-time noise (pydantic "ReadOnly" notices); nothing a host can fix.
        warnings.simplefilter("ignore", UserWarning)
        importlib.import_module("litellm")  # ~3 s: paid at startup, not by the first request
    from llm_server.models._refusals import capture_litellm_refusals

    capture_litellm_refusals()


def share_caches(
    config: ModelsConfig,
    fleet: Fleet | None,
    lms: Mapping[str, Any],
    keys: Mapping[str, ResolvedKey],
) -> dict[str, Any]:
    """Give each model with ``shared_cache:`` its cache in the fleet's Redis."""
    wanted = {mid: m for mid, m in config.models.items() if m.shared_cache is not None}
    if not wanted:
        return {}
    from llm_server.models._managed_lm import SHARED_CACHE_SUPPORTED

    if fleet is None or not SHARED_CACHE_SUPPORTED:
        why = (
            "it lives in Redis: set LLM_SERVER_REDIS_URL"
            if fleet is None
            else "this DSPy version has no plain-data call records"
        )
        raise ConfigurationError(
            f"model {next(iter(wanted))!r}: shared_cache is not available: {why}"
        )
    from llm_server.fleet import SharedResponseCache

    caches: dict[str, Any] = {}
    for model_id, model in wanted.items():
        assert model.shared_cache is not None
        cache = SharedResponseCache(
            fleet.connection,
            model_id=model_id,
            api_base=model.api_base,
            api_key=keys[model_id].value,
            ttl_s=model.shared_cache.ttl_s,
            max_entry_bytes=model.shared_cache.max_entry_bytes,
        )
        lms[model_id].share_cache(cache)
        caches[model_id] = cache
    return caches


def connect_fleet(settings: FrameworkSettings) -> Fleet | None:
    """The fleet's shared state when ``LLM_SERVER_REDIS_URL`` is set (needs redis-py)."""
    if settings.redis_url is None:
        return None
    try:
        from llm_server.fleet import Fleet
    except ImportError as exc:
        raise ConfigurationError(
            "LLM_SERVER_REDIS_URL is set, but the Redis client is not installed: "
            'pip install "llm-server-framework[fleet]"'
        ) from exc
    return Fleet.from_settings(settings)


def default_telemetry(settings: FrameworkSettings) -> Telemetry:
    current = get_telemetry()
    if current.enabled:
        return current
    telemetry = Telemetry(settings)
    if telemetry.enabled:
        set_telemetry(telemetry)
    return telemetry


def configure_dspy_cache(any_opt_in: bool) -> None:
    import dspy

    # Off entirely unless a model opts in: no memory held and no ~/.dspy_cache folder. An
    # opted-in model gets an in-memory cache; a host that wants DSPy's disk cache calls
    # dspy.configure_cache(...) itself after building the manager.
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=any_opt_in)


def context_window(model: ModelConfig) -> int | None:
    """The YAML's ``context_window``, else LiteLLM's map's, else unknown (no check)."""
    known = lookup_model(model.model_name)
    return model.context_window or (known.context_window if known else None)
