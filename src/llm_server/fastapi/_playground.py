"""A playground page: try every program, version and model from the browser (opt-in)."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Sequence
from importlib import resources
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from llm_server.core.errors import ConfigurationError, DataValidationError
from llm_server.core.implementations import ModelProcessor
from llm_server.core.metadata import MetadataCollector
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.pipeline import Pipeline
from llm_server.core.streaming import stream_events
from llm_server.core.telemetry import log_context
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi._endpoints import _model_block
from llm_server.fastapi._signature_models import _signature_of, signature_models
from llm_server.fastapi._sse import sse_response
from llm_server.fastapi._state import get_program_manager

__all__ = ["add_playground"]

_STATIC = ("playground.css", "playground.js")
_TYPES = {"playground.css": "text/css; charset=utf-8", "playground.js": "text/javascript"}


class RunRequest(BaseModel):
    """One run from the playground."""

    inputs: dict[str, Any] = Field(description="The program's input fields")
    model_id: str
    version: str | None = Field(default=None, description="Default: the served version")
    stream: bool = False


def _choices(annotation: Any) -> list[Any] | None:
    """The JSON values a ``Literal`` or ``Enum`` field accepts (``None`` aside), else ``None``.

    ``Optional``/``| None`` and ``Annotated`` are looked through; a union of such types offers
    all their values. An enum whose values are not plain JSON scalars offers none.
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _choices(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        parts = [_choices(a) for a in typing.get_args(annotation) if a is not types.NoneType]
        if not parts or any(part is None for part in parts):
            return None
        return [value for part in parts if part is not None for value in part]
    if origin is typing.Literal:
        values = [v.value if isinstance(v, enum.Enum) else v for v in typing.get_args(annotation)]
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
    else:
        return None
    values = [value for value in values if value is not None]
    if not all(isinstance(value, str | int | float | bool) for value in values):
        return None
    return values


def _asset(name: str) -> str:
    return resources.files("llm_server.fastapi").joinpath("playground", name).read_text()


async def _live_figures(pm: Any, program_id: str) -> dict[str, Any] | None:
    """The served version's and a running canary's figures (if the manager keeps them).

    In a worker thread: with traffic capture they include feedback, read from its store.
    """
    figures = getattr(pm, "canary_figures", None)
    if not callable(figures):
        return None
    found: dict[str, Any] | None = await anyio.to_thread.run_sync(figures, program_id)
    return found


def add_playground(
    app: FastAPI,
    *,
    path: str = "/playground",
    dependencies: Sequence[DependsParam] = (),
) -> None:
    """Serve a page to try every program, version and model, and compare two side by side.

    Opt-in: call it only where the page should exist (e.g. not in production), and/or pass
    ``dependencies`` (your auth) to guard every route it adds. Everything is served by the
    package (no CDN); the page talks only to the routes added here:

    - ``GET {path}``: the page;
    - ``GET {path}/api/catalog``: programs (versions, the served one, input schema, the
      choices of each ``Literal`` or ``Enum`` input, live figures of the served version and
      a running canary) and models (breaker state);
    - ``POST {path}/api/run/{program_id}``: run a program on a model at a version, as JSON
      (the response envelope) or as Server-Sent Events (``stream``).

    Args:
        app: The app.
        path: Where the page lives.
        dependencies: FastAPI dependencies every playground route runs first (auth).
    """
    router = APIRouter(prefix=path, dependencies=list(dependencies), include_in_schema=False)

    @router.get("", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html").replace("{{base}}", path))

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC:
            return Response(status_code=404)
        return Response(_asset(name), media_type=_TYPES[name])

    @router.get("/api/catalog")
    async def catalog(request: Request) -> dict[str, Any]:
        pm = get_program_manager(request)
        models = []
        for model_id, info in pm.model_info.items():
            breaker = getattr(pm.model_manager, "breakers", {}).get(model_id)
            models.append(
                {
                    "id": model_id,
                    "model_name": getattr(info, "model_name", None),
                    "breaker": str(breaker.state) if breaker is not None else None,
                }
            )
        default_model = next(iter(pm.model_info), "")
        programs = []
        for meta in pm.registry.list_programs():
            entry: dict[str, Any] = {
                "id": meta.id,
                "name": meta.name,
                "version": meta.version,
                "versions": await pm.alist_versions(meta.id),
                "figures": await _live_figures(pm, meta.id),
            }
            try:
                signature = _signature_of(pm.registry.get_program_class(meta.id))
                request_model, _ = signature_models(
                    signature, program_id=meta.id, default_model_id=default_model
                )
                schema = request_model.model_json_schema()
                schema["properties"].pop("model_id", None)
                entry["schema"] = schema
                entry["choices"] = {
                    name: values
                    for name, info in signature.input_fields.items()
                    if (values := _choices(info.annotation)) is not None
                }
                entry["outputs"] = list(signature.output_fields)
                entry["description"] = (signature.__doc__ or "").strip()
            except ConfigurationError as exc:
                entry["unavailable"] = exc.message
            programs.append(entry)
        return {"programs": programs, "models": models}

    @router.post("/api/run/{program_id}", response_model=None)
    async def run(program_id: str, body: RunRequest, request: Request) -> Any:
        pm = get_program_manager(request)
        signature = _signature_of(pm.registry.get_program_class(program_id))
        request_model, _ = signature_models(
            signature, program_id=program_id, default_model_id=body.model_id
        )
        try:
            validated = request_model.model_validate({**body.inputs, "model_id": body.model_id})
        except ValidationError as exc:
            raise DataValidationError(
                f"program {program_id!r}: "
                + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
            ) from None
        metadata = await pm.aget_version_metadata(program_id, body.version)
        check = getattr(pm.model_manager, "ensure_available", None)
        if callable(check):
            check(body.model_id)
        backend = await pm.areliable_backend(program_id, body.model_id, version=metadata.version)
        step = ModelProcessor(
            backend,
            accepted_types=[MediaType.STRUCTURED],
            output_type=MediaType.STRUCTURED,
            name=program_id,
        )
        pipeline = Pipeline([step], name=program_id)
        inputs = {name: getattr(validated, name) for name in signature.input_fields}
        data = PipelineData(media_type=MediaType.STRUCTURED, content=inputs)
        metrics = PerformanceMetrics()

        def envelope(result: PipelineData) -> dict[str, Any]:
            metrics.mark_checkpoint("pipeline_complete")
            collected = MetadataCollector.collect_response_metadata(
                model_id=body.model_id,
                program_metadata=metadata,
                performance_metrics=metrics.get_summary(),
                model_info=_model_block(pm.model_info, body.model_id, result.metadata),
            )
            return {"success": True, "data": result.content, "metadata": collected}

        with log_context(program_id=program_id, model_id=body.model_id):
            if body.stream:
                events = stream_events(lambda: pipeline.execute(data))
                return await sse_response(
                    events,
                    done=envelope,
                    on_first_delta=lambda: metrics.mark_checkpoint("first_token"),
                )
            return JSONResponse(envelope(await pipeline.execute(data)))

    app.include_router(router)
