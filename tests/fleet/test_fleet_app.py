"""The fleet from a host app's side: one setting, clear startup errors, 429s and /models."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import dspy
import httpx
import pytest
from _fleet_helpers import url_of
from fastapi import Depends, FastAPI, Header, HTTPException
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError, RateLimitExceededError
from llm_server.fastapi import (
    add_program_endpoint,
    health_router,
    install_error_handlers,
    llm_server_lifespan,
    tenant_header,
    tenant_usage_router,
)
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio

PASSWORD = "fleet-secret-7f3a9c2e51"
_locked_redis_proc = factories.redis_proc(port=None, password=PASSWORD)


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
def locked_redis(request: pytest.FixtureRequest, private_redis: RedisExecutor) -> RedisExecutor:
    """A private redis-server that wants a password (``private_redis`` checked it exists)."""
    executor: RedisExecutor = request.getfixturevalue("_locked_redis_proc")
    return executor


def settings(tmp_path: Path, **values: Any) -> FrameworkSettings:
    base: dict[str, Any] = {
        "otel_enabled": False,
        "llm_programs_dir": tmp_path / "programs",
        "retry_max_attempts": 1,
        "breaker_failure_threshold": 5,
    }
    return FrameworkSettings(**{**base, **values})


def models(provider: LocalProvider, **extra: Any) -> StaticConfigProvider:
    return StaticConfigProvider(
        {
            "gpt-4o-mini": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                **extra,
            }
        }
    )


def test_without_a_redis_url_there_is_no_fleet(tmp_path: Path, provider: LocalProvider) -> None:
    manager = ModelManager(config_provider=models(provider), settings=settings(tmp_path))
    assert manager.fleet is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "http://127.0.0.1:6379/0",
            "the scheme must be redis://, rediss://, unix:// or redis+sentinel://",
        ),
        ("redis://127.0.0.1:notaport/0", "is not a usable Redis URL"),
    ],
)
def test_an_unusable_url_fails_startup_naming_the_variable(
    tmp_path: Path, provider: LocalProvider, url: str, problem: str
) -> None:
    with pytest.raises(ConfigurationError, match="LLM_SERVER_REDIS_URL") as caught:
        ModelManager(config_provider=models(provider), settings=settings(tmp_path, redis_url=url))
    assert problem in caught.value.message


def test_a_wrong_password_fails_startup_and_is_never_shown(
    tmp_path: Path, provider: LocalProvider, locked_redis: RedisExecutor
) -> None:
    url = f"redis://:wrong-{PASSWORD}@{locked_redis.host}:{locked_redis.port}/0"
    with pytest.raises(ConfigurationError, match="refused the connection") as caught:
        ModelManager(config_provider=models(provider), settings=settings(tmp_path, redis_url=url))
    assert PASSWORD not in caught.value.message
    assert f"redis://{locked_redis.host}:{locked_redis.port}/0" in caught.value.message
    assert PASSWORD not in repr(settings(tmp_path, redis_url=url))


async def test_the_password_setting_is_used_and_redacted(
    tmp_path: Path, provider: LocalProvider, locked_redis: RedisExecutor
) -> None:
    values = settings(tmp_path, redis_url=url_of(locked_redis), redis_password=PASSWORD)
    manager = ModelManager(config_provider=models(provider), settings=values)
    try:
        assert manager.fleet is not None
        assert not manager.fleet.connection.fallback
        assert PASSWORD not in repr(values)
    finally:
        await manager.aclose()


def test_an_unreachable_redis_fails_startup_only_when_required(
    tmp_path: Path, provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    with socket_nobody_listens_on() as url:
        with pytest.raises(ConfigurationError, match="cannot reach Redis at"):
            ModelManager(
                config_provider=models(provider),
                settings=settings(tmp_path, redis_url=url, redis_required=True),
            )
        with caplog.at_level(logging.WARNING, logger="llm_server.fleet"):
            manager = ModelManager(
                config_provider=models(provider), settings=settings(tmp_path, redis_url=url)
            )
        assert manager.fleet is not None
        assert manager.fleet.connection.fallback  # starts per process, shares once Redis is up
        assert any("per process" in r.getMessage() for r in caplog.records)
        manager.fleet.close()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def app_for(provider: LocalProvider, tmp_path: Path, **extra: Any) -> FastAPI:
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[(Summarize, "Summarizer")],
            settings=settings(tmp_path, **extra.pop("settings", {})),
            config_provider=models(provider, **extra),
        )
    )
    install_error_handlers(app)
    app.include_router(health_router())
    add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
    return app


async def test_a_shared_limit_answers_429_and_models_shows_the_fleet(
    tmp_path: Path, provider: LocalProvider, redis_url: str, prefix: str
) -> None:
    provider.clear()
    app = app_for(
        provider,
        tmp_path,
        rate_limit={"requests_per_minute": 2},
        settings={"redis_url": redis_url, "redis_prefix": prefix},
    )
    async with serving(app) as client:
        statuses = []
        for _ in range(3):
            response = await client.post("/programs/summarize", json={"text": "hello"})
            statuses.append(response.status_code)
        assert statuses == [200, 200, 429]
        assert int(response.headers["Retry-After"]) >= 1
        error = response.json()["error"]
        assert error["type"] == "rate_limited"
        assert "the fleet's rate_limit (2 requests_per_minute)" in error["message"]
        assert len(provider.requests) == 2  # the refused call was never sent

        body = (await client.get("/models")).json()
        model = body["models"][0]
        assert model["rate_limit"]["shared"] is True
        assert model["rate_limit"]["refused_fleet"] == 1
        assert model["breaker"]["shared"] is True
        assert body["fleet"]["shared"] is True
        assert body["fleet"]["members"] >= 1
        assert "@" not in body["fleet"]["redis"]
        assert body["fleet"]["misconfigured"] is None
        assert body["fleet"]["sync_lag_s"] < 1
        assert model["breaker"]["forced_by"] is None


async def test_a_limit_without_redis_is_per_process(
    tmp_path: Path, provider: LocalProvider
) -> None:
    provider.clear()
    app = app_for(provider, tmp_path, rate_limit={"requests_per_minute": 1})
    async with serving(app) as client:
        ok = await client.post("/programs/summarize", json={"text": "hello"})
        refused = await client.post("/programs/summarize", json={"text": "hello"})
        assert (ok.status_code, refused.status_code) == (200, 429)
        assert "this process's rate_limit" in refused.json()["error"]["message"]
        body = (await client.get("/models")).json()
        assert body["fleet"] is None
        assert body["models"][0]["rate_limit"]["refused_local"] == 1


async def test_a_rate_limited_model_falls_back(tmp_path: Path, provider: LocalProvider) -> None:
    config = StaticConfigProvider(
        {
            "small": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                "rate_limit": {"requests_per_minute": 1},
                "fallbacks": ["large"],
            },
            "large": {
                "model_name": "openai/gpt-4o",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
            },
        }
    )
    manager = ModelManager(config_provider=config, settings=settings(tmp_path))
    try:
        backend = manager.reliable_backend(dspy.Predict(Summarize), "small")
        first = await backend.predict({"text": "a"})
        second = await backend.predict({"text": "b"})
        assert (first.model_id, second.model_id) == ("small", "large")
        assert second.metadata["fallback_from"] == ["small"]
    finally:
        await manager.aclose()


@contextmanager
def socket_nobody_listens_on() -> Iterator[str]:
    """A Redis URL whose port is held (bound, never listening): connecting is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{held.getsockname()[1]}/0"


def budget_app(provider: LocalProvider, tmp_path: Path, **settings_values: Any) -> FastAPI:
    config = StaticConfigProvider(
        {
            "gpt-4o-mini": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
            }
        },
        budgets={"acme": {"per_day": {"requests": 2}}},
    )
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[(Summarize, "Summarizer")],
            settings=settings(tmp_path, **settings_values),
            config_provider=config,
        ),
        dependencies=[Depends(tenant_header())],
    )
    install_error_handlers(app)
    app.include_router(health_router())
    app.include_router(tenant_usage_router(dependencies=[Depends(admin_only)]))
    add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
    return app


async def admin_only(authorization: str = Header(default="")) -> None:
    """The host's own guard (here a fixed token)."""
    if authorization != "Bearer admin-token":
        raise HTTPException(401, "admin credentials required")


ADMIN = {"Authorization": "Bearer admin-token"}


async def test_a_tenant_over_budget_gets_429_budget_exceeded(
    tmp_path: Path, provider: LocalProvider
) -> None:
    provider.clear()
    async with serving(budget_app(provider, tmp_path)) as client:
        acme = {"X-Tenant-ID": "acme"}
        statuses = [
            (await client.post("/programs/summarize", json={"text": "hi"}, headers=acme))
            for _ in range(3)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        refused = statuses[-1]
        assert refused.json()["error"]["type"] == "budget_exceeded"
        assert (
            "tenant 'acme' spent its requests budget for this day"
            in (refused.json()["error"]["message"])
        )
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(provider.requests) == 2
        # another tenant, and a request naming none, are not limited by acme's budget
        other = await client.post(
            "/programs/summarize", json={"text": "hi"}, headers={"X-Tenant-ID": "b"}
        )
        anonymous = await client.post("/programs/summarize", json={"text": "hi"})
        assert (other.status_code, anonymous.status_code) == (200, 200)
        usage = (await client.get("/tenants/acme/usage", headers=ADMIN)).json()
        assert usage["periods"]["day"]["requests"] == 2
        assert usage["periods"]["day"]["tokens"] > 0
        assert usage["periods"]["day"]["budget_requests"] == 2
        assert usage["shared"] is False
        bad = await client.post(
            "/programs/summarize", json={"text": "hi"}, headers={"X-Tenant-ID": "a\x01"}
        )
        assert bad.status_code == 400


async def test_a_tenant_budget_is_shared_by_the_fleet(
    tmp_path: Path, provider: LocalProvider, redis_url: str, prefix: str
) -> None:
    fleet_settings = {"redis_url": redis_url, "redis_prefix": prefix}
    first, second = (budget_app(provider, tmp_path, **fleet_settings) for _ in range(2))
    acme = {"X-Tenant-ID": "acme"}
    async with serving(first) as one, serving(second) as two:
        assert (
            await one.post("/programs/summarize", json={"text": "a"}, headers=acme)
        ).status_code == 200
        assert (
            await one.post("/programs/summarize", json={"text": "b"}, headers=acme)
        ).status_code == 200
        await anyio.sleep(0.3)  # the first process's charges are written within 100 ms
        refused = await two.post("/programs/summarize", json={"text": "c"}, headers=acme)
        assert refused.status_code == 429
        assert "by the fleet's count" in refused.json()["error"]["message"]
        usage = (await two.get("/tenants/acme/usage", headers=ADMIN)).json()
        assert usage["shared"] is True
        assert usage["periods"]["day"]["requests"] == 2


def test_synchronous_calls_take_from_the_rate_limit_too(
    tmp_path: Path, provider: LocalProvider
) -> None:
    # what an optimizer does: lm(...) from a plain thread, no event loop
    manager = ModelManager(
        config_provider=models(provider, rate_limit={"requests_per_minute": 1}),
        settings=settings(tmp_path),
    )
    lm = manager.get_lm("gpt-4o-mini")
    assert lm("hi")
    with pytest.raises(RateLimitExceededError, match="this process's rate_limit"):
        lm("again")


async def test_the_usage_route_needs_the_hosts_credentials(
    tmp_path: Path, provider: LocalProvider
) -> None:
    async with serving(budget_app(provider, tmp_path)) as client:
        assert (await client.get("/tenants/acme/usage")).status_code == 401
        assert (await client.get("/tenants/acme/usage", headers=ADMIN)).status_code == 200
        health = (await client.get("/health/live")).status_code
        assert health == 200  # health stays open


@pytest.mark.parametrize(
    "tenant", ["a\x01", "a b", "../etc", "x" * 129, "-lead", "acme;drop", "t%"]
)
async def test_bad_tenant_ids_get_a_400_envelope(
    tmp_path: Path, provider: LocalProvider, tenant: str
) -> None:
    provider.clear()
    async with serving(budget_app(provider, tmp_path)) as client:
        header_value = tenant.encode("utf-8").decode("latin-1")  # as a client would send it
        refused = await client.post(
            "/programs/summarize", json={"text": "hi"}, headers={"X-Tenant-ID": header_value}
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "bad_input"
        assert "X-Tenant-ID header" in refused.json()["error"]["message"]
        assert provider.requests == []
        if "/" not in tenant and "\x01" not in tenant:
            by_path = await client.get(f"/tenants/{tenant}/usage", headers=ADMIN)
            assert by_path.status_code == 400
            assert by_path.json()["error"]["type"] == "bad_input"


async def test_models_shows_who_forced_a_breaker_and_until_when(
    tmp_path: Path, provider: LocalProvider, redis_url: str, prefix: str
) -> None:
    app = app_for(provider, tmp_path, settings={"redis_url": redis_url, "redis_prefix": prefix})
    async with serving(app) as client:
        breaker = app.state.model_manager.breakers["gpt-4o-mini"]
        breaker.force_open(ttl_s=300, by="ops", reason="provider maintenance")
        shown = (await client.get("/models")).json()["models"][0]["breaker"]
        assert shown["state"] == "forced_open"
        assert (shown["forced_by"], shown["forced_reason"]) == ("ops", "provider maintenance")
        assert shown["forced_until"] - shown["forced_at"] == 300
        assert shown["opened_because"] == "forced open by ops: provider maintenance"
        breaker.reset()
        shown = (await client.get("/models")).json()["models"][0]["breaker"]
        assert (shown["state"], shown["forced_by"]) == ("closed", None)
