"""A model (YAML ``adapter:``) or a program (at registration) chooses its DSPy adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from pydantic import ValidationError

from llm_server.core.config import FrameworkSettings
from llm_server.core.model_config import ModelConfig
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models.manager import ModelManager
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


def manager_for(provider: LocalProvider, **extra: Any) -> ModelManager:
    config = StaticConfigProvider(
        {
            "m": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                **extra,
            }
        }
    )
    return ModelManager(config_provider=config, settings=FrameworkSettings(otel_enabled=False))


def prompt_of(provider: LocalProvider) -> str:
    return " ".join(str(m.get("content", "")) for m in provider.requests[-1].messages)


@pytest.mark.parametrize(
    ("adapter", "marker"),
    [(None, "[[ ## answer ## ]]"), ("chat", "[[ ## answer ## ]]"), ("xml", "<answer>")],
)
async def test_the_models_adapter_formats_the_prompt(
    provider: LocalProvider, adapter: str | None, marker: str
) -> None:
    manager = manager_for(provider, **({"adapter": adapter} if adapter else {}))
    try:
        output = await manager.reliable_backend(dspy.Predict(Ask), "m").predict({"question": "q"})
        assert output.content.answer.startswith("echo:")
        assert marker in prompt_of(provider)
    finally:
        await manager.aclose()


async def test_the_json_adapter_asks_for_json(provider: LocalProvider) -> None:
    manager = manager_for(provider, adapter="json")
    try:
        output = await manager.reliable_backend(dspy.Predict(Ask), "m").predict({"question": "q"})
        assert output.content.answer.startswith("echo:")
        assert "[[ ## answer ## ]]" not in prompt_of(provider)
        assert "response_format" in provider.requests[-1].body
    finally:
        await manager.aclose()


async def test_a_programs_adapter_wins_over_the_models(
    provider: LocalProvider, tmp_path: Path
) -> None:
    manager = manager_for(provider, adapter="chat")
    programs = ProgramManager(
        model_manager=manager, storage_adapter=FileSystemStorageAdapter(tmp_path)
    )
    programs.register_program(Ask, adapter="xml")
    try:
        await programs.reliable_backend("ask", "m").predict({"question": "q"})
        assert "<answer>" in prompt_of(provider)
    finally:
        await manager.aclose()


def test_an_unknown_adapter_is_refused() -> None:
    with pytest.raises(ValidationError, match="'chat', 'json' or 'xml'"):
        ModelConfig.model_validate({"model_name": "openai/m", "adapter": "yaml"})
