"""The shared response cache: over real HTTP, two providers, two keys, two tenants, one Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import dspy
import pytest
from _fleet_helpers import Connect, url_of
from pydantic import ValidationError
from pytest_redis.executor import RedisExecutor

from llm_server.core.budgets import tenant_scope
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError
from llm_server.core.model_config import ModelConfig
from llm_server.core.model_interfaces import TokenCountMethod
from llm_server.fleet import SharedResponseCache
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture
def providers() -> Iterator[tuple[LocalProvider, LocalProvider]]:
    with LocalProvider(reply="from A") as a, LocalProvider(reply="from B") as b:
        yield a, b


def manager(
    url: str, prefix: str, providers: tuple[LocalProvider, LocalProvider], **cache: Any
) -> ModelManager:
    a, b = providers
    shared = {"shared_cache": cache or {}}
    config = StaticConfigProvider(
        {
            "a": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": a.openai_api_base,
                "api_key": "sk-tenant-a-0000000000",
                **shared,
            },
            "b": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": b.openai_api_base,
                "api_key": "sk-tenant-b-1111111111",
                **shared,
            },
        }
    )
    settings = FrameworkSettings(otel_enabled=False, redis_url=url, redis_prefix=prefix)
    return ModelManager(config_provider=config, settings=settings)


async def ask(models: ModelManager, model_id: str, question: str) -> Any:
    backend = models.reliable_backend(dspy.Predict(Ask), model_id)
    return await backend.predict({"question": question})


async def test_a_hit_is_served_from_redis_and_says_so(
    redis_url: str, prefix: str, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    a, _ = providers
    models = manager(redis_url, prefix, providers)
    try:
        first = await ask(models, "a", "What is DSPy?")
        await anyio.sleep(0.3)  # stored by the sync thread within 100 ms
        second = await ask(models, "a", "What is DSPy?")
        assert first.content.answer == second.content.answer == "from A"
        assert len(a.requests) == 1  # the second never reached the provider
        assert first.usage.method is TokenCountMethod.EXACT
        assert second.usage.method is TokenCountMethod.CACHED  # "cache_hit" in the envelope
        assert second.usage.total_tokens == 0
        assert second.cost_usd == 0
        assert (models.caches["a"].hits, models.caches["a"].misses) == (1, 1)
    finally:
        await models.aclose()


async def test_other_endpoints_keys_and_tenants_never_share_an_entry(
    redis_url: str, prefix: str, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    a, b = providers
    models = manager(redis_url, prefix, providers)
    try:
        await ask(models, "a", "q")
        await anyio.sleep(0.3)
        other_endpoint = await ask(models, "b", "q")  # same model name and request
        assert other_endpoint.content.answer == "from B"
        assert len(b.requests) == 1
        with tenant_scope("t1"):
            await ask(models, "a", "q")  # a tenant never sees the tenant-less entry
        await anyio.sleep(0.3)
        with tenant_scope("t2"):
            await ask(models, "a", "q")
        with tenant_scope("t1"):
            hit = await ask(models, "a", "q")
        assert len(a.requests) == 3  # tenant-less, t1, t2; t1's second was a hit
        assert hit.usage.method is TokenCountMethod.CACHED
    finally:
        await models.aclose()


async def test_redis_down_means_no_cache_never_an_error(
    killable_redis: RedisExecutor, prefix: str, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    a, _ = providers
    models = manager(url_of(killable_redis), prefix, providers)
    try:
        with killable_redis.stopped():
            for _ in range(3):
                answer = await ask(models, "a", "still there?")
                assert answer.content.answer == "from A"
        assert len(a.requests) == 3
    finally:
        await models.aclose()


async def test_answers_over_the_size_cap_are_not_cached(
    redis_url: str, prefix: str, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    a, _ = providers
    models = manager(redis_url, prefix, providers, max_entry_bytes=64)
    try:
        await ask(models, "a", "big")
        await anyio.sleep(0.3)
        await ask(models, "a", "big")
        assert len(a.requests) == 2
        assert models.caches["a"].skipped == 2
    finally:
        await models.aclose()


def test_a_shared_cache_needs_redis_and_excludes_dspys_cache(
    providers: tuple[LocalProvider, LocalProvider],
) -> None:
    a, _ = providers
    config = StaticConfigProvider(
        {
            "a": {
                "model_name": "openai/m",
                "api_base": a.openai_api_base,
                "api_key": "k",
                "shared_cache": {},
            }
        }
    )
    with pytest.raises(
        ConfigurationError, match="shared_cache is not available: it lives in Redis"
    ):
        ModelManager(config_provider=config, settings=FrameworkSettings(otel_enabled=False))
    with pytest.raises(ValidationError, match="choose 'cache'"):
        ModelConfig.model_validate({"model_name": "openai/m", "cache": True, "shared_cache": {}})


async def test_cached_answers_take_no_rate_limit_capacity(
    redis_url: str, prefix: str, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    a, _ = providers
    config = StaticConfigProvider(
        {
            "a": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": a.openai_api_base,
                "api_key": "sk-tenant-a-0000000000",
                "shared_cache": {},
                "rate_limit": {"requests_per_minute": 3},
            }
        }
    )
    settings = FrameworkSettings(otel_enabled=False, redis_url=redis_url, redis_prefix=prefix)
    models = ModelManager(config_provider=config, settings=settings)
    try:
        await ask(models, "a", "What is DSPy?")
        await anyio.sleep(0.3)  # stored by the sync thread within 100 ms
        answers = [await ask(models, "a", "What is DSPy?") for _ in range(10)]
        assert [x.usage.method for x in answers] == [TokenCountMethod.CACHED] * 10  # no 429
        assert len(a.requests) == 1
        assert models.caches["a"].hits == 10
    finally:
        await models.aclose()


async def test_an_entry_lives_as_long_as_its_ttl_in_redis(
    redis_url: str, prefix: str, providers: tuple[LocalProvider, LocalProvider]
) -> None:
    models = manager(redis_url, prefix, providers, ttl_s=120)
    try:
        await ask(models, "a", "How long?")
        await anyio.sleep(0.3)
        connection = models.fleet.connection  # type: ignore[union-attr]
        keys = connection.client.keys(connection.key("cache", "*"))
        assert len(keys) == 1
        assert 110_000 < connection.client.pttl(keys[0]) <= 120_000
    finally:
        await models.aclose()


def test_the_key_changes_with_the_endpoint_alone(connect: Connect) -> None:
    connection = connect()
    common: dict[str, Any] = {
        "model_id": "m",
        "api_key": "sk-same",
        "ttl_s": 60,
        "max_entry_bytes": 1000,
    }
    one = SharedResponseCache(connection, api_base="http://127.0.0.1:1/v1", **common)
    other = SharedResponseCache(connection, api_base="http://127.0.0.1:2/v1", **common)
    same = SharedResponseCache(connection, api_base="http://127.0.0.1:1/v1", **common)
    request = {"model": "openai/m", "messages": [{"role": "user", "content": "q"}]}
    assert one.key(request) != other.key(request)
    assert one.key(request) == same.key(request)


@pytest.mark.parametrize("ttl_s", [0.0, float("inf"), float("nan"), 1e12])
def test_a_ttl_redis_cannot_store_is_refused_when_the_cache_is_built(
    connect: Connect, ttl_s: float
) -> None:
    # An infinite ttl failed inside int() (OverflowError); one past ~292,000 years made every
    # write an error from Redis ("invalid expire time").
    with pytest.raises(ConfigurationError, match=r"shared cache of 'm': ttl_s must be a finite"):
        SharedResponseCache(
            connect(), model_id="m", api_base=None, api_key=None, ttl_s=ttl_s, max_entry_bytes=1
        )
