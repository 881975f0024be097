"""Expose a registered program as a POST endpoint typed by its signature."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import Field, create_model

from llm_server.core.errors import (
    ConfigurationError,
    LLMServerError,
    ModelNotFoundError,
)
from llm_server.core.implementations import ModelProcessor
from llm_server.core.metadata import MetadataCollector
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.pipeline import Pipeline
from llm_server.core.streaming import stream_events
from llm_server.core.telemetry._logging import current_execution_id, log_context
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi._canary_serving import Picked, count_outcome, pick_version
from llm_server.fastapi._gate import gate_for, guarded_route
from llm_server.fastapi._schemas import ErrorEnvelope
from llm_server.fastapi._signature_models import _camel, _signature_of, signature_models
from llm_server.fastapi._sse import sse_response
from llm_server.fastapi._state import get_program_manager

__all__ = ["add_program_endpoint", "signature_models"]

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        400: "The body is not JSON, or nests deeper than LLM_SERVER_MAX_JSON_DEPTH",
        404: "Unknown model id, or the program is not registered",
        413: "The body is over max_request_bytes, or the prompt cannot fit the context window",
        422: "The body does not match the request schema, or the model declined to answer",
        429: "The provider is rate limiting (Retry-After)",
        500: "An error in the service itself",
        502: "The provider failed, or its answer was unparseable, cut at max_tokens or empty",
        503: "Every circuit breaker the call could use is open (Retry-After)",
        504: "The request deadline passed, or the provider timed out",
    }.items()
}


@dataclass(frozen=True, slots=True)
class _Route:
    """What one (program version, model) pair runs with, built once."""

    pipeline: Pipeline
    program_metadata: Any
    ensure_available: Callable[[], None]
    """Raises ``CircuitOpenError`` when every breaker the call could use would refuse it."""


def _always_available() -> None:
    """For model managers without ``ensure_available``: their stack refuses by itself."""


class _ProgramRunner:
    """Builds each (served version, model) pipeline once; later requests only look it up.

    ``ProgramManager.get_program`` returns a new instance per call, so building per request
    would load the program and compose a new backend stack every time; the cache is dropped
    when the served version changes (a new optimized version was saved) or the app restarts
    with another program manager.
    """

    def __init__(self, program_id: str) -> None:
        self.program_id = program_id
        self._manager: Any = None
        self._version: str | None = None
        self._routes: dict[str, _Route] = {}
        self._named: dict[tuple[str, str], _Route] = {}

    def route(
        self, manager: Any, model_id: str, version: str | None = None, *, metadata: Any = None
    ) -> _Route:
        """The cached route of the served version, or of a stored ``version`` by name, or of
        ``metadata``'s version (a canary's: picked per request).

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
            ProgramNotFoundError: The program or the named version is unknown.
        """
        served = manager.registry.get_program_metadata(self.program_id)
        if manager is not self._manager or served.version != self._version:
            self._manager, self._version, self._routes = manager, served.version, {}
            self._named = {}
        if metadata is not None and metadata.version != served.version:
            named = self._named.get((metadata.version, model_id))
            if named is None:
                named = self._build(manager, model_id, metadata)
                self._named[(metadata.version, model_id)] = named
            return named
        if version is not None and version != served.version:
            # A stored version by name: immutable once saved, so cached until the app restarts
            named = self._named.get((version, model_id))
            if named is None:
                named = self._build(
                    manager, model_id, manager.get_version_metadata(self.program_id, version)
                )
                self._named[(version, model_id)] = named
            return named
        route = self._routes.get(model_id)
        if route is None:
            route = self._build(manager, model_id, served)
            self._routes[model_id] = route
        return route

    def _build(self, manager: Any, model_id: str, metadata: Any) -> _Route:
        if model_id not in manager.model_info:
            raise ModelNotFoundError(model_id, list(manager.model_info))
        backend = manager.reliable_backend(self.program_id, model_id, version=metadata.version)
        step = ModelProcessor(
            backend,
            accepted_types=[MediaType.STRUCTURED],
            output_type=MediaType.STRUCTURED,
            name=self.program_id,
        )
        check = getattr(manager.model_manager, "ensure_available", None)
        available = functools.partial(check, model_id) if callable(check) else _always_available
        return _Route(Pipeline([step], name=self.program_id), metadata, available)


async def billed(call: Awaitable[PipelineData], metrics: PerformanceMetrics) -> PipelineData:
    """Await ``call``; an error of ours leaves with what the request was billed (its
    ``request_usage``, the error envelope's ``usage``)."""
    try:
        return await call
    except LLMServerError as exc:
        exc.request_usage = metrics.billed_usage()
        raise


def _model_block(
    model_info: Mapping[str, Any], requested: str, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The envelope's model block: the model that answered, and the one asked for if another."""
    output = metadata.get("model_output")
    answered = output.get("model_id") if isinstance(output, Mapping) else None
    if not isinstance(answered, str) or answered == requested or answered not in model_info:
        return _dump(model_info[requested])
    return {**_dump(model_info[answered]), "requested_id": requested}


def _dump(info: Any) -> dict[str, Any]:
    dump = getattr(info, "model_dump", None)
    return dict(dump(by_alias=True)) if callable(dump) else dict(info)


def envelope(
    pm: Any,
    model_id: str,
    route: _Route,
    metrics: PerformanceMetrics,
    result: PipelineData,
    *,
    picked: Picked | None = None,
) -> dict[str, Any]:
    """The success envelope of one program call (shared with the OpenAI-compatible routes);
    with ``picked``, the program block says whether a running canary answered."""
    metrics.mark_checkpoint("pipeline_complete")
    metadata = MetadataCollector.collect_response_metadata(
        model_id=model_id,
        program_metadata=route.program_metadata,
        performance_metrics=metrics.get_summary(),
        model_info=_model_block(pm.model_info, model_id, result.metadata),
    )
    if picked is not None:
        metadata["program"] = picked.program_block(metadata["program"])
    return {"success": True, "data": result.content, "metadata": metadata}


def record_served(
    pm: Any, program_id: str, inputs: Mapping[str, Any], response: Mapping[str, Any]
) -> None:
    """Hand a served request to the program's traffic capture, if it captures (never raises)."""
    traffic = getattr(pm, "traffic", None)
    if traffic is None:
        return
    try:
        traffic.served(program_id, inputs, response)
    except Exception:  # capture never breaks a request
        logging.getLogger("llm_server.traffic").warning("capture failed", exc_info=True)


def record_failed(
    pm: Any,
    program_id: str,
    route: _Route,
    *,
    model_id: str,
    inputs: Mapping[str, Any],
    error: Exception,
    metrics: PerformanceMetrics,
) -> None:
    """Hand a failed request to the program's traffic capture, if it captures (never raises)."""
    traffic = getattr(pm, "traffic", None)
    execution_id = current_execution_id()
    if traffic is None or execution_id is None:  # without the middleware no id reaches a client
        return
    try:
        traffic.failed(
            program_id,
            execution_id=execution_id,
            version=str(getattr(route.program_metadata, "version", "")),
            model_id=model_id,
            inputs=inputs,
            error=error,
            latency_ms=metrics.elapsed_ms(),
        )
    except Exception:  # capture never breaks a request
        logging.getLogger("llm_server.traffic").warning("capture failed", exc_info=True)


async def run_recorded(
    pm: Any,
    program_id: str,
    route: _Route,
    data: PipelineData,
    *,
    model_id: str,
    picked: Picked | None,
) -> dict[str, Any]:
    """Run a program's route on ``data`` and answer its envelope; the outcome is counted in
    the version's live figures (with ``picked``) and handed to the traffic capture, failures
    too (an error leaves with what was billed, its ``request_usage``). A request cancelled
    under it is counted neither way, as a stream's is."""
    metrics = PerformanceMetrics()
    outcome = Outcome(pm, program_id, route, picked, model_id, data, metrics)
    with log_context(program_id=program_id, model_id=model_id):
        try:
            result = await billed(route.pipeline.execute(data), metrics)
        except Exception as exc:
            outcome.failed(exc)
            raise
    return outcome.served(result)


@dataclass(slots=True)
class Outcome:
    """Where one program request's outcome goes, on every route that runs a program (the
    program route and its stream, served programs, the OpenAI stream): the version's live
    figures (with ``picked``: a named version is not a canary's share, not counted) and the
    traffic capture."""

    pm: Any
    program_id: str
    route: _Route
    picked: Picked | None
    model_id: str
    data: PipelineData
    metrics: PerformanceMetrics

    def served(self, result: PipelineData) -> dict[str, Any]:
        """Count a success; its envelope (handed to the capture)."""
        pm, picked = self.pm, self.picked
        if picked is not None:
            count_outcome(pm, self.program_id, picked, None, self.metrics)
        response = envelope(pm, self.model_id, self.route, self.metrics, result, picked=picked)
        record_served(pm, self.program_id, self.data.content, response)
        return response

    def failed(self, error: Exception) -> None:
        """Count a failure (a stream's: before its first event or midway) and capture it."""
        if self.picked is not None:
            count_outcome(self.pm, self.program_id, self.picked, error, self.metrics)
        record_failed(
            self.pm,
            self.program_id,
            self.route,
            model_id=self.model_id,
            inputs=self.data.content,
            error=error,
            metrics=self.metrics,
        )


def add_program_endpoint(
    app: FastAPI | APIRouter,
    program_id: str,
    *,
    default_model_id: str,
    signature: Any = None,
    path: str | None = None,
    program_manager: Any = None,
    max_request_bytes: int | None = None,
    stream: bool = False,
) -> None:
    """Add ``POST /programs/{program_id}`` (or ``path``) running a registered program.

    The request model has the signature's input fields plus ``model_id``; the response is
    ``{"success": true, "data": {<output fields>}, "metadata": {...}}``, the full envelope.
    Both come from the signature, so OpenAPI shows the fields. Each request runs the version
    the registry serves through a one-step pipeline on the composed model stack (deadline,
    fallbacks, retries, breaker); errors go through the installed error handlers.

    Args:
        app: The app or router to add the route to.
        program_id: A registered program's id (registered by the lifespan).
        default_model_id: The model used when a request does not name one.
        signature: The program's signature, or its module class (a module with exactly one
            predictor). Needed because routes are typed when the app is built, before the
            lifespan registers the programs; may be omitted when ``program_manager`` is given.
        path: The route path (default ``/programs/{program_id}``).
        program_manager: A manager to use instead of ``request.app.state.program_manager``.
        max_request_bytes: The largest body this route accepts (default: the settings'
            ``max_request_bytes``, ``LLM_SERVER_MAX_REQUEST_BYTES``, 2 MiB). A larger one is
            refused with 413 and the error envelope: at once when ``Content-Length`` says so,
            else as soon as the bytes read pass the limit (nothing more is read).
        stream: Also add ``POST {path}/stream``: the same request body, answered with
            Server-Sent Events (``delta`` per piece of each string output field, then
            ``done`` with the same envelope, its ``performance.timing`` with
            ``first_token_ms``; ``error`` when the call fails after its first piece). A
            failure before the first piece answers the error envelope with its status.

    Before FastAPI parses the body, the route refuses a body over the limit and a request
    every breaker it could use would refuse (``CircuitOpenError``, 503); with
    :class:`~llm_server.fastapi.RequestContextMiddleware` installed, later requests are refused
    there, before routing.

    Raises:
        ConfigurationError: No signature can be found, or it cannot be expressed as JSON.
    """
    manager = program_manager
    if signature is None:
        if manager is None:
            raise ConfigurationError(
                f"add_program_endpoint({program_id!r}) needs signature=<the signature class>: "
                "routes are typed when the app is built, before the lifespan registers programs"
            )
        signature = manager.registry.get_program_class(program_id)
    signature = _signature_of(signature)
    request_model, data_model = signature_models(
        signature, program_id=program_id, default_model_id=default_model_id
    )
    response_model = create_model(
        f"{_camel(program_id)}Response",
        success=(Literal[True], True),
        data=(data_model, ...),
        metadata=(dict[str, Any], Field(..., description="program, model, performance, ids")),
    )
    input_names = tuple(signature.input_fields)
    runner = _ProgramRunner(program_id)

    def prepared(request: Request, body: Any) -> tuple[Any, str, _Route, PipelineData, Picked]:
        pm = manager if manager is not None else get_program_manager(request)
        model_id: str = body.model_id
        # Values as validated (not dumped), so typed inputs reach the program as their types.
        inputs = {name: getattr(body, name) for name in input_names}
        data = PipelineData(media_type=MediaType.STRUCTURED, content=inputs)
        picked = pick_version(pm, program_id, request)  # once: in flight stays on its version
        return pm, model_id, runner.route(pm, model_id, metadata=picked.metadata), data, picked

    async def endpoint(request: Request, body: Any) -> Any:
        pm, model_id, route, data, picked = prepared(request, body)
        return await run_recorded(pm, program_id, route, data, model_id=model_id, picked=picked)

    async def stream_endpoint(request: Request, body: Any) -> Response:
        pm, model_id, route, data, picked = prepared(request, body)
        metrics = PerformanceMetrics()
        outcome = Outcome(pm, program_id, route, picked, model_id, data, metrics)
        with log_context(program_id=program_id, model_id=model_id):
            events = stream_events(lambda: billed(route.pipeline.execute(data), metrics))
            return await sse_response(
                events,
                done=outcome.served,
                on_error=outcome.failed,
                on_first_delta=lambda: metrics.mark_checkpoint("first_token"),
            )

    gate = gate_for(
        runner.route,
        request_model=request_model,
        default_model_id=default_model_id,
        manager=manager,
    )
    endpoint.__annotations__["body"] = request_model
    router = app.router if isinstance(app, FastAPI) else app
    router.add_api_route(
        path or f"/programs/{program_id}",
        endpoint,
        methods=["POST"],
        response_model=response_model,
        responses=_ERROR_RESPONSES,
        summary=f"Run program {program_id}",
        description=(signature.__doc__ or "").strip() or None,
        name=f"run_{program_id}",
        route_class_override=guarded_route(gate, max_request_bytes=max_request_bytes),
    )
    if stream:
        stream_endpoint.__annotations__["body"] = request_model
        router.add_api_route(
            (path or f"/programs/{program_id}") + "/stream",
            stream_endpoint,
            methods=["POST"],
            responses={
                200: {
                    "description": (
                        "Server-Sent Events: `delta` ({field, text}) per piece of a string "
                        "output field, then `done` with the full envelope, or `error` with "
                        "the error envelope when the call fails after its first piece"
                    ),
                    "content": {"text/event-stream": {}},
                },
                **_ERROR_RESPONSES,
            },
            summary=f"Run program {program_id}, streaming its output fields",
            description=(signature.__doc__ or "").strip() or None,
            name=f"stream_{program_id}",
            route_class_override=guarded_route(
                gate, max_request_bytes=max_request_bytes, direct=stream_endpoint
            ),
        )
