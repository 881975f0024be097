"""Helpers shared by the FastAPI integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dspy
import httpx
from fastapi import FastAPI

from llm_server.core.config import FrameworkSettings
from llm_server.testing import LocalProvider

PLANTED_KEY = "sk-planted-0123456789abcdefXYZ"
"""An API key the tests plant in configs and provider errors, then search responses for."""


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField(desc="The text to summarize")
    summary: str = dspy.OutputField(desc="A one-sentence summary")


class Tally(dspy.Signature):
    """Count and label things."""

    count: int = dspy.InputField(desc="How many")
    labels: list[str] = dspy.InputField()
    strict: bool = dspy.InputField()
    note: str | None = dspy.InputField(desc="Optional note")
    total: int = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    ok: bool = dspy.OutputField()


def make_settings(tmp_path: Path, **overrides: Any) -> FrameworkSettings:
    """Explicit settings (no .env or environment can change a test); one attempt per call."""
    values: dict[str, Any] = {
        "otel_enabled": False,
        "llm_programs_dir": tmp_path / "programs",
        "retry_max_attempts": 1,
        "breaker_failure_threshold": 5,
        "request_deadline_s": 30.0,
    }
    values.update(overrides)
    return FrameworkSettings(**values)


def models_for(provider: LocalProvider, **extra: Any) -> dict[str, Any]:
    """Two OpenAI-protocol models served by ``provider``; ``extra`` goes into both."""
    return {
        "gpt-4o-mini": {
            "model_name": "openai/gpt-4o-mini",
            "api_base": provider.openai_api_base,
            "api_key": PLANTED_KEY,
            **extra,
        },
        "gpt-4o": {
            "model_name": "openai/gpt-4o",
            "api_base": provider.openai_api_base,
            "api_key": PLANTED_KEY,
            **extra,
        },
    }


@asynccontextmanager
async def serving(
    app: FastAPI, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield an in-process client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


MakeApp = Callable[..., FastAPI]
"""The ``make_app`` fixture (see conftest.py)."""
