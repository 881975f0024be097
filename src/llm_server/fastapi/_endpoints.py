"""Expose a registered program as a POST endpoint typed by its signature."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from llm_server.core.errors import ConfigurationError
from llm_server.core.metadata import MetadataCollector
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.model_processor import ModelProcessor
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

__all__ = ["add_program_endpoint", "signature_models"]


def _signature_of(program: Any) -> Any:
    signature = getattr(program, "signature", None)
    if signature is not None:
        return signature
    predictors = program.predictors() if hasattr(program, "predictors") else []
    if len(predictors) == 1:
        return predictors[0].signature
    raise ConfigurationError(
        f"cannot infer the signature of {type(program).__name__}: it has "
        f"{len(predictors)} predictors; pass signature=... to add_program_endpoint"
    )


def _camel(program_id: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", program_id) if part)


def signature_models(
    signature: Any, *, program_id: str, default_model_id: str
) -> tuple[type[BaseModel], type[BaseModel]]:
    """Build the request and response-data models from a DSPy signature.

    The request has one field per signature input (typed by its annotation, described by its
    ``desc``) plus ``model_id``; the response data has one field per output.
    """

    def fields(items: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, info in items.items():
            annotation = info.annotation if info.annotation is not None else str
            extra = info.json_schema_extra or {}
            desc = extra.get("desc") if isinstance(extra, dict) else None
            description = desc if isinstance(desc, str) and desc != f"${{{name}}}" else None
            result[name] = (annotation, Field(..., description=description))
        return result

    base = _camel(program_id)
    request_model = create_model(
        f"{base}Request",
        __config__=ConfigDict(extra="forbid"),
        model_id=(str, Field(default=default_model_id, description="Configured model id")),
        **fields(dict(signature.input_fields)),
    )
    data_model = create_model(f"{base}Data", **fields(dict(signature.output_fields)))
    return request_model, data_model


def add_program_endpoint(
    app: FastAPI | APIRouter,
    program_id: str,
    *,
    default_model_id: str,
    path: str | None = None,
    signature: Any = None,
    program_manager: Any = None,
) -> None:
    """Add ``POST /programs/{program_id}`` (or ``path``) running a registered program.

    The request and response models come from the program's signature, so OpenAPI shows its
    fields. The endpoint runs the program through a pipeline (a STRUCTURED
    :class:`ModelProcessor`) and answers with the full envelope
    ``{"success", "data", "metadata"}``. Errors go through the installed error handlers.

    Args:
        app: The app or router to add the route to.
        program_id: A registered program's id.
        default_model_id: The model used when a request does not name one.
        path: The route path (default ``/programs/{program_id}``).
        signature: The signature, for modules whose signature cannot be inferred.
        program_manager: The manager (default: ``request.app.state.program_manager``; pass it
            when the program is registered after the app is built, so the route is typed).
    """
    manager = program_manager
    if manager is None and isinstance(app, FastAPI):
        manager = getattr(app.state, "program_manager", None)
    if signature is None:
        if manager is None:
            raise ConfigurationError(
                f"add_program_endpoint({program_id!r}) needs signature=... or a "
                "program_manager to read the program's signature from"
            )
        signature = _signature_of(manager.get_program(program_id))
    request_model, data_model = signature_models(
        signature, program_id=program_id, default_model_id=default_model_id
    )
    response_model = create_model(
        f"{_camel(program_id)}Response",
        success=(bool, True),
        data=(data_model, ...),
        metadata=(dict[str, Any], ...),
    )

    async def endpoint(request: Request, body: Any) -> Any:
        pm = manager or request.app.state.program_manager
        metrics = PerformanceMetrics()
        inputs = body.model_dump(exclude={"model_id"})
        step = ModelProcessor(
            pm.model_manager.backend_for(pm.get_program(program_id), body.model_id),
            accepted_types=[MediaType.STRUCTURED],
            output_type=MediaType.STRUCTURED,
            name=program_id,
        )
        result = await Pipeline([step], name=program_id).execute(
            PipelineData(media_type=MediaType.STRUCTURED, content=inputs)
        )
        metrics.mark_checkpoint("pipeline_complete")
        info = pm.model_info.get(body.model_id)
        metadata = MetadataCollector.collect_response_metadata(
            model_id=body.model_id,
            program_metadata=pm.registry.get_program_metadata(program_id),
            performance_metrics=metrics.get_summary(),
            model_info=info,
        )
        return {"success": True, "data": result.content, "metadata": metadata}

    endpoint.__annotations__["body"] = request_model
    app.add_api_route(
        path or f"/programs/{program_id}",
        endpoint,
        methods=["POST"],
        response_model=response_model,
        summary=f"Run program {program_id}",
        name=f"run_{program_id}",
    )
