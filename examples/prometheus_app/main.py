"""Prometheus metrics for the classic example app (its ``POST /predict`` route).

Run offline with ``.venv/bin/python examples/serve.py prometheus_app`` (the app turns telemetry on
itself), send a few requests to ``POST /predict``, then read ``GET /metrics`` (with or without
the trailing slash): the GenAI client metrics
(``gen_ai_client_operation_duration_seconds``, ``gen_ai_client_token_usage``), the cost
counter and breaker state, at the default telemetry detail level. With
``LLM_SERVER_TELEMETRY_DETAIL=full`` the pipeline and step durations are there too.
``examples/grafana_dashboard.json`` charts them (its Pipelines row needs ``full``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Response
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
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


# This app exists to show metrics: telemetry is on unless OTEL_ENABLED says otherwise.
settings = FrameworkSettings(otel_enabled=os.environ.get("OTEL_ENABLED", "true") != "false")


@asynccontextmanager
async def otel_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The OpenTelemetry SDK setup (runs before the framework builds its models)."""
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
    programs=[(Predictor, "Text Completion")],
    config_path="config/model_config.yml",
    settings=settings,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """SDK first, then the framework, so its telemetry finds the meter provider."""
    async with otel_lifespan(app), framework_lifespan(app):
        yield


app = FastAPI(lifespan=lifespan)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)


@app.get("/metrics", include_in_schema=False)
@app.get("/metrics/", include_in_schema=False)  # both answer: no redirect for scrapers to follow
def prometheus_metrics() -> Response:
    """What the Prometheus reader collected, in Prometheus' text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@app.post("/predict")
async def predict_text(
    request: PredictionRequest,
    program_manager: Annotated[ProgramManager, Depends(get_program_manager)],
) -> dict[str, Any]:
    """The classic endpoint, with errors left to the installed envelope handlers."""
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
