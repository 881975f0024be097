"""Fixtures shared by the reliability tests."""

from __future__ import annotations

import pytest

from llm_server.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at t=0."""
    return FakeClock()
