"""The library's first "basic usage" example, kept as it was written (imports added).

The managers are built by hand in the lifespan and every error is a 500 ``{"detail": ...}``;
``examples/quickstart_app`` is the same service with typed endpoints, error envelopes and
health routes.

Run it offline against the local test provider with ``.venv/bin/python examples/serve.py``
(see README.md); ``config/model_config.yml`` beside this file points ``gpt-4o-mini`` there.
"""

import time
from fastapi import FastAPI, HTTPException
from contextlib import asynccontextmanager
from pydantic import BaseModel
import dspy

# 1. Import the framework's core components
from llm_server.core.config import FrameworkSettings
from llm_server.core.metrics_wrappers import PerformanceMetrics, ModelBackendTracker
from llm_server.defaults import FileSystemStorageAdapter, YamlConfigProvider
from llm_server.models.manager import ModelManager
from llm_server.models.predictor import Predictor # A basic dspy.Signature
from llm_server.models.program_manager import ProgramManager

# The imports the reference example leaves out:
from llm_server.core.implementations import DefaultOutputProcessor, ModelProcessor
from llm_server.core.metadata import MetadataCollector
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

class PredictionRequest(BaseModel):
    prompt: str
    model_id: str = "gpt-4o-mini"

@asynccontextmanager
async def lifespan(app: FastAPI):
    # 2. Configure and instantiate the framework managers
    settings = FrameworkSettings()
    config_provider = YamlConfigProvider("config/model_config.yml")
    storage_adapter = FileSystemStorageAdapter(base_dir="dspy_programs")

    model_manager = ModelManager(config_provider=config_provider, settings=settings)
    program_manager = ProgramManager(model_manager=model_manager, storage_adapter=storage_adapter)

    # 3. Register your application's DSPy programs
    program_manager.register_program(program_class=Predictor, name="Text Completion")

    # 4. Make managers available to your API routes
    app.state.program_manager = program_manager
    yield
    app.state.program_manager = None

app = FastAPI(lifespan=lifespan)

@app.post("/predict")
async def predict_text(request: PredictionRequest):
    """A modern endpoint using the pipeline and automatic metadata."""
    try:
        program_manager: ProgramManager = app.state.program_manager
        metrics = PerformanceMetrics() # 1. Start performance tracking

        # 2. Define the processing pipeline
        pipeline = Pipeline([
            ModelProcessor(
                model_manager=program_manager.model_manager,
                model_id=request.model_id,
                signature_class=Predictor,
                input_key="input",
                output_processor=DefaultOutputProcessor(),
                accepted_types=[MediaType.TEXT],
                output_type=MediaType.TEXT,
            )
        ])

        # 3. Execute the pipeline
        result_data = await pipeline.execute(
            PipelineData(media_type=MediaType.TEXT, content=request.prompt)
        )
        metrics.mark_checkpoint("pipeline_complete")

        # 4. Automatically collect all consistent metadata
        final_metadata = MetadataCollector.collect_response_metadata(
            model_id=request.model_id,
            program_metadata=program_manager.registry.get_program_metadata("predictor"),
            performance_metrics=metrics.get_summary(),
            model_info=program_manager.model_info.get(request.model_id, {}).model_dump(by_alias=True)
        )

        return {
            "success": True,
            "data": {"response": result_data.content},
            "metadata": final_metadata,
        }
    except Exception as e:
        # Proper error handling
        raise HTTPException(status_code=500, detail=str(e))
