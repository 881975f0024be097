"""The reference README's Prometheus setup as a runnable app, with the reference /predict route.

Run offline with ``OTEL_ENABLED=true python examples/serve.py prometheus_app``, send a few
requests to ``POST /predict``, then read ``GET /metrics``: the GenAI client metrics
(``gen_ai_client_operation_duration_seconds``, ``gen_ai_client_token_usage``), the cost
counter, breaker state and pipeline/step durations. ``examples/grafana_dashboard.json`` charts
them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import make_asgi_app
from pydantic import BaseModel

from llm_server.core.config import FrameworkSettings
from llm_server.core.implementations import ModelProcessor
from llm_server.core.metadata import MetadataCollector
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi import (
    RequestContextMiddleware,
    get_program_manager,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.models.predictor import Predictor
from llm_server.models.program_manager import ProgramManager


class PredictionRequest(BaseModel):
    prompt: str
    model_id: str = "gpt-4o-mini"


@asynccontextmanager
async def otel_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The reference README's SDK setup (runs before the framework builds its models)."""
    settings = FrameworkSettings()
    if settings.otel_enabled:
        resource = Resource.create(
            {
                "service.name": settings.otel_service_name,
                "service.version": settings.otel_service_version,
            }
        )
        reader = PrometheusMetricReader()
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        metrics.set_meter_provider(provider)
    yield


framework_lifespan = llm_server_lifespan(
    programs=[(Predictor, "Text Completion")], config_path="config/model_config.yml"
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """SDK first, then the framework, as the reference README orders them."""
    async with otel_lifespan(app), framework_lifespan(app):
        yield


app = FastAPI(lifespan=lifespan)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)

settings = FrameworkSettings()
if settings.otel_enabled:
    metrics_app = make_asgi_app()
    app.mount("/metrics", metrics_app)


@app.post("/predict")
async def predict_text(
    request: PredictionRequest,
    program_manager: Annotated[ProgramManager, Depends(get_program_manager)],
) -> dict[str, Any]:
    """The reference endpoint, with errors left to the installed envelope handlers."""
    performance = PerformanceMetrics()
    pipeline = Pipeline(
        [
            ModelProcessor(
                model_manager=program_manager.model_manager,
                model_id=request.model_id,
                signature_class=Predictor,
                input_key="input",
                accepted_types=[MediaType.TEXT],
                output_type=MediaType.TEXT,
            )
        ],
        name="predict",
    )
    result = await pipeline.execute(PipelineData(media_type=MediaType.TEXT, content=request.prompt))
    performance.mark_checkpoint("pipeline_complete")
    return {
        "success": True,
        "data": {"response": result.content},
        "metadata": MetadataCollector.collect_response_metadata(
            model_id=request.model_id,
            program_metadata=program_manager.registry.get_program_metadata("predictor"),
            performance_metrics=performance.get_summary(),
            model_info=program_manager.model_info.get(request.model_id),
        ),
    }
