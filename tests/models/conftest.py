"""Fixtures for the model layer: one local provider per module, and a manager factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _model_helpers import MakeManager

from llm_server.core.config import FrameworkSettings
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture(autouse=True)
def _fresh_provider(request: pytest.FixtureRequest) -> None:
    if "provider" in request.fixturenames:
        local: LocalProvider = request.getfixturevalue("provider")
        local.clear_faults()
        local.clear()
        local.script(reply=None)
        local.usage = True
        local.latency_s = 0.0


@pytest.fixture
async def make_manager(provider: LocalProvider) -> AsyncIterator[MakeManager]:
    """Build ModelManagers over ``models`` (api_base defaults to the local provider).

    An async fixture so that every manager's connection pools are closed on the test's own
    event loop afterwards (pools left open surface as ResourceWarnings).
    """
    managers: list[ModelManager] = []

    def make(
        models: Mapping[str, Mapping[str, Any]],
        *,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> ModelManager:
        filled = {
            model_id: {"api_base": provider.openai_api_base, **spec}
            for model_id, spec in models.items()
        }
        manager = ModelManager(
            config_provider=StaticConfigProvider(filled),
            settings=FrameworkSettings(**settings),
            environ={} if environ is None else environ,
        )
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.aclose()


# LiteLLM builds pydantic schemas for TypedDicts with `ReadOnly` items lazily, on its first
# calls, and pydantic warns about each one. Harmless for us; silenced for this folder only.
_LITELLM_READONLY_NOTICE = "ignore:.*using the `ReadOnly` qualifier:UserWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings(_LITELLM_READONLY_NOTICE))
