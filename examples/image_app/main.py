"""An image app: upload an image, a vision model describes it.

Run offline with ``.venv/bin/python examples/serve.py image_app``, then::

    curl -F "file=@photo.jpg" http://127.0.0.1:8000/describe

The upload is checked and shrunk by ``ImageProcessor`` (size and pixel limits, EXIF
orientation, metadata stripped, at most 800x800) before the model sees it; bad uploads get a
4xx error envelope (413 too large, 415 unsupported, 422 undecodable).
"""

from typing import Annotated, Any

import dspy
from fastapi import Depends, FastAPI, File, Form, UploadFile

from llm_server.core.errors import PayloadTooLargeError
from llm_server.core.implementations import ImageProcessor, ModelProcessor
from llm_server.core.metadata import MetadataCollector
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi import (
    RequestContextMiddleware,
    get_program_manager,
    health_router,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.models.program_manager import ProgramManager

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class DescribeImage(dspy.Signature):
    """Describe the image in one sentence."""

    image: dspy.Image = dspy.InputField()
    description: str = dspy.OutputField()


app = FastAPI(
    title="Image description",
    lifespan=llm_server_lifespan(
        programs=[(DescribeImage, "Image description")],
        config_path="config/model_config.yml",
    ),
)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
app.include_router(health_router())

image_step = ImageProcessor(max_size=(800, 800), max_input_bytes=MAX_UPLOAD_BYTES)


@app.post("/describe")
async def describe(
    file: Annotated[UploadFile, File(description="A JPEG, PNG, WEBP or GIF image")],
    program_manager: Annotated[ProgramManager, Depends(get_program_manager)],
    model_id: Annotated[str, Form()] = "gpt-4o-mini",
) -> dict[str, Any]:
    """Describe an uploaded image."""
    content = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(content) > MAX_UPLOAD_BYTES:
        raise PayloadTooLargeError(f"upload is larger than {MAX_UPLOAD_BYTES} bytes")
    metrics = PerformanceMetrics()
    pipeline = Pipeline(
        [
            image_step,
            ModelProcessor(
                model_manager=program_manager.model_manager,
                model_id=model_id,
                signature_class=DescribeImage,
                input_key="image",
                accepted_types=[MediaType.IMAGE],
                output_type=MediaType.TEXT,
            ),
        ],
        name="describe_image",
    )
    result = await pipeline.execute(PipelineData(media_type=MediaType.IMAGE, content=content))
    metrics.mark_checkpoint("pipeline_complete")
    return {
        "success": True,
        "data": {"description": result.content, "image": result.metadata.get("image")},
        "metadata": MetadataCollector.collect_response_metadata(
            model_id=model_id,
            program_metadata=program_manager.registry.get_program_metadata("describe_image"),
            performance_metrics=metrics.get_summary(),
            model_info=program_manager.model_info.get(model_id),
        ),
    }
