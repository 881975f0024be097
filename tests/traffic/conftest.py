"""Fixtures of the traffic tests: one local provider per module, reset per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llm_server.testing import LocalProvider


@pytest.fixture(scope="module")
def provider_server() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
def provider(provider_server: LocalProvider) -> Iterator[LocalProvider]:
    provider_server.clear_faults()
    provider_server.clear()
    provider_server.script(reply=None)
    yield provider_server
    provider_server.clear_faults()
    provider_server.script(reply=None)
