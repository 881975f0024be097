"""Helpers shared by the fleet tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_redis.executor import RedisExecutor

from _app_processes import copy_example, serving_app
from llm_server.core.config import FrameworkSettings
from llm_server.fleet import FleetConnection
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider

Connect = Callable[..., FleetConnection]
"""The ``connect`` fixture: ``connect(url=..., timeout_s=...)`` -> a new FleetConnection."""


def url_of(executor: RedisExecutor) -> str:
    """The ``redis://`` URL of a private server."""
    return f"redis://{executor.host}:{executor.port}/0"


FLEET_APP = Path(__file__).resolve().parents[2] / "examples" / "fleet_app"


@contextmanager
def uvicorn_fleet(
    folder: Path, *, workers: int, env: Mapping[str, str], timeout_s: float = 120.0
) -> Iterator[str]:
    """``examples/fleet_app`` (copied to ``folder``) under ``uvicorn --workers N``; its URL."""
    copy_example("fleet_app", folder)
    with serving_app(folder, env=env, workers=workers, timeout_s=timeout_s) as url:
        yield url


def budget_manager(
    provider: LocalProvider,
    tmp_path: Path,
    url: str | None,
    prefix: str,
    *,
    input_per_million: float,
    budget_usd: float = 5,
    extra: dict[str, Any] | None = None,
    **settings_extra: Any,
) -> ModelManager:
    """One "process" of a fleet (``url=None``: without Redis): model ``m`` (100 max tokens,
    output at $10,000 per million tokens, input at ``input_per_million``, plus ``extra``
    keys) and a ``budget_usd``/day budget for tenant ``acme``; ``settings_extra`` are more
    settings."""
    config = StaticConfigProvider(
        {
            "m": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                "max_tokens": 100,
                **(extra or {}),
                "pricing": {
                    "input_per_million": input_per_million,
                    "output_per_million": 10_000,
                },
            }
        },
        budgets={"acme": {"per_day": {"cost_usd": budget_usd}}},
    )
    settings = FrameworkSettings(
        otel_enabled=False,
        llm_programs_dir=tmp_path / "programs",
        retry_max_attempts=1,
        redis_url=url,
        redis_prefix=prefix,
        redis_timeout_s=1.0,  # these tests are about the bound while Redis answers
        **settings_extra,
    )
    return ModelManager(config_provider=config, settings=settings)
