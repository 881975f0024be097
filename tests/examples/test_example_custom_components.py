"""examples/custom_components.py: the reference README's custom step and backend, run."""

from __future__ import annotations

import subprocess

import pytest
from _example_helpers import EXAMPLES, PYTHON, REPO

from llm_server.core.types import MediaType, PipelineData


def test_the_script_runs_and_prints_the_result() -> None:
    result = subprocess.run(
        [PYTHON, str(EXAMPLES / "custom_components.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "41 words" in result.stdout  # 200 chars of the 80-word text, plus "..."
    assert "'summarized': True" in result.stdout


@pytest.mark.anyio
async def test_the_pipeline_summarizes_then_calls_the_custom_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import custom_components

    short = await custom_components.custom_pipeline.execute(
        PipelineData(media_type=MediaType.TEXT, content="just three words")
    )
    assert short.content == "3 words"
    assert short.metadata["original_length"] == 16
    assert short.metadata["summarized"] is True
    step = custom_components.TextSummarizerStep(max_length=5)
    cut = await step.process(PipelineData(media_type=MediaType.TEXT, content="abcdefgh"))
    assert cut.content == "abcde..."
