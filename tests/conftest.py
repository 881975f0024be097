"""Shared test configuration."""

from __future__ import annotations

import pytest

from llm_server._offline import ensure_offline

ensure_offline()


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio tests on asyncio only (DSPy and our code target asyncio)."""
    return "asyncio"
