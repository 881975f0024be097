"""A custom pipeline step and a custom model backend: the library's two extension points.

Run: ``.venv/bin/python examples/custom_components.py`` (no model provider needed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from llm_server.core.implementations import ModelProcessor
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.pipeline import Pipeline
from llm_server.core.protocols import ModelBackend, PipelineStep
from llm_server.core.types import MediaType, PipelineData


class TextSummarizerStep(PipelineStep):
    """A custom step: truncates long text."""

    def __init__(self, max_length: int = 100):
        self.max_length = max_length

    @property
    def accepted_media_types(self) -> list[MediaType]:
        return [MediaType.TEXT]

    async def process(self, data: PipelineData) -> PipelineData:
        text = data.content
        summary = text[: self.max_length] + "..." if len(text) > self.max_length else text
        return PipelineData(
            media_type=MediaType.TEXT,
            content=summary,
            metadata={**data.metadata, "original_length": len(text), "summarized": True},
        )


async def your_model_call(input: Any) -> ModelOutput:
    """Stands in for a call to your own model (here: counts words)."""
    words = len(str(input).split())
    return ModelOutput(content={"output": f"{words} words"}, model_id="my-model")


class CustomModelBackend(ModelBackend):
    """A custom backend: answers without calling a model."""

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.program_metadata = None
        self.last_prompt_tokens = None
        self.last_completion_tokens = None

    async def predict(self, input: Any) -> ModelOutput:
        # Your custom model logic here
        return await your_model_call(input)

    def get_lm_history(self) -> list[Any]:
        return []  # Return model interaction history


custom_pipeline = Pipeline(
    [
        TextSummarizerStep(max_length=200),
        ModelProcessor(
            backend=CustomModelBackend("my-model"),
            accepted_types=[MediaType.TEXT],
            output_type=MediaType.TEXT,
        ),
    ]
)


async def main() -> PipelineData:
    """Run the pipeline once and print the result."""
    initial_data = PipelineData(media_type=MediaType.TEXT, content="the quick brown fox " * 20)
    result = await custom_pipeline.execute(initial_data)
    print(result.content, dict(result.metadata))
    return result


if __name__ == "__main__":
    asyncio.run(main())
