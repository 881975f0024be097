"""optimize_program: evaluate, compile and save with scores, fingerprints, tokens and cost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from llm_server.core.config import FrameworkSettings
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models.manager import ModelManager
from llm_server.models.optimization import optimize_program
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider, StaticConfigProvider


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def echoes(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> bool:
    return str(prediction.answer).startswith("echo:")


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


def test_a_run_records_what_it_did_and_does_not_promote(
    provider: LocalProvider, tmp_path: Path
) -> None:
    models = ModelManager(
        config_provider=StaticConfigProvider(
            {
                "m": {
                    "model_name": "openai/gpt-4o-mini",
                    "api_base": provider.openai_api_base,
                    "api_key": "sk-test",
                    "rate_limit": {
                        "requests_per_minute": 1000
                    },  # the optimizer's calls take from it
                }
            }
        ),
        settings=FrameworkSettings(otel_enabled=False),
    )
    programs = ProgramManager(
        model_manager=models, storage_adapter=FileSystemStorageAdapter(tmp_path)
    )
    programs.register_program(Ask, version="1.0.0")
    examples = [
        dspy.Example(question=f"q{n}", answer=f"a{n}").with_inputs("question") for n in range(6)
    ]
    provider.clear()
    run = optimize_program(
        programs,
        models,
        "ask",
        optimizer=dspy.BootstrapFewShot(
            metric=echoes, max_bootstrapped_demos=2, max_labeled_demos=0
        ),
        optimizer_settings={"max_bootstrapped_demos": 2, "max_labeled_demos": 0},
        trainset=examples[:4],
        devset=examples[4:],
        metric=echoes,
        model_id="m",
        notes="nightly",
    )
    assert (run.parent_version, run.version, run.optimizer) == (
        "1.0.0",
        "1.1.0",
        "BootstrapFewShot",
    )
    assert (run.score_before, run.score_after) == (100.0, 100.0)
    assert (run.trainset_size, run.devset_size) == (4, 2)
    calls = len(provider.requests)
    assert calls >= 4  # two evaluations of 2 examples, plus the bootstrapping
    assert run.usage.total_tokens > 0
    assert run.cost_usd is not None
    assert run.cost_usd > 0
    assert programs.registry.get_program_metadata("ask").version == "1.0.0"  # not promoted
    saved = programs.get_version_metadata("ask", "1.1.0")
    assert saved.evaluation is not None
    assert saved.evaluation["score_before"] == 100.0
    assert saved.evaluation["devset_sha256"] == run.devset_sha256
    assert saved.evaluation["usage"]["input_tokens"] == run.usage.input_tokens
    assert saved.optimizer_settings == {"max_bootstrapped_demos": 2, "max_labeled_demos": 0}
    assert saved.trainset_sha256 == run.trainset_sha256
    assert len(programs.get_program("ask", "1.1.0").demos) == 2
