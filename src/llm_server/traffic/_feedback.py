"""HTTP routes for feedback on served executions, and per-version figures (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends
from pydantic import BaseModel, ConfigDict, Field

from llm_server.core.errors import ExecutionNotFoundError, ProgramNotFoundError
from llm_server.traffic._capture import TrafficRecorder
from llm_server.traffic._records import FeedbackKind

__all__ = ["FeedbackRequest", "add_feedback_routes"]


class FeedbackRequest(BaseModel):
    """The body of ``POST /programs/{program_id}/feedback``."""

    model_config = ConfigDict(extra="forbid")

    execution_id: str = Field(min_length=1, max_length=128, description="The envelope's id")
    score: float | None = Field(default=None, description="A number, e.g. 0 to 1")
    label: str | None = Field(default=None, max_length=64, description="A short label")
    comment: str | None = Field(default=None, max_length=2000, description="Free text")


def _recorder(request: Request, program_manager: Any, program_id: str) -> TrafficRecorder:
    pm = program_manager if program_manager is not None else request.app.state.program_manager
    traffic = getattr(pm, "traffic", None)
    if not isinstance(traffic, TrafficRecorder) or traffic.options(program_id) is None:
        raise ProgramNotFoundError(f"program {program_id!r} does not capture traffic")
    return traffic


def add_feedback_routes(
    app: FastAPI | APIRouter,
    *,
    dependencies: Sequence[Depends] = (),
    prefix: str = "/programs",
    program_manager: Any = None,
) -> None:
    """Add ``POST {prefix}/{program_id}/feedback`` and ``GET {prefix}/{program_id}/feedback``.

    The POST stores a verdict on one served execution (``execution_id`` from the response
    envelope, a ``score`` and/or a ``label``, a ``comment``), with the version that answered;
    it answers ``{"success": true, "data": {...}}``, or the error envelope: 404
    ``execution_not_found`` for an unknown or expired execution id (or a program that does
    not capture traffic), 400 ``bad_input`` without a score or label. The GET answers the
    per-version figures: ``{"success": true, "data": {version: {count, scored, mean_score,
    labels}, ...}}`` (``?kind=human`` or ``judge`` to count one kind).

    Args:
        app: The app or router.
        dependencies: The host's guards (authentication, ``tenant_header()``), as
            ``[Depends(...)]``: feedback changes what future versions learn from.
        prefix: The path before ``/{program_id}/feedback``.
        program_manager: A manager to use instead of ``request.app.state.program_manager``.
    """
    router = app.router if isinstance(app, FastAPI) else app

    async def give_feedback(
        program_id: str, body: FeedbackRequest, request: Request
    ) -> dict[str, Any]:
        try:
            recorder = _recorder(request, program_manager, program_id)
        except ProgramNotFoundError as exc:
            raise ExecutionNotFoundError(str(exc)) from None
        feedback = await recorder.afeedback(
            program_id,
            body.execution_id,
            score=body.score,
            label=body.label,
            comment=body.comment,
        )
        return {
            "success": True,
            "data": {
                "execution_id": feedback.execution_id,
                "program_id": feedback.program_id,
                "version": feedback.version,
                "kind": feedback.kind,
                "score": feedback.score,
                "label": feedback.label,
            },
        }

    async def feedback_figures(
        program_id: str, request: Request, kind: str | None = None
    ) -> dict[str, Any]:
        recorder = _recorder(request, program_manager, program_id)
        wanted: FeedbackKind | None = (
            "judge" if kind == "judge" else "human" if kind == "human" else None
        )
        summary = await recorder.afeedback_summary(program_id, kind=wanted)
        return {"success": True, "data": {v: f.as_dict() for v, f in summary.items()}}

    router.add_api_route(
        f"{prefix}/{{program_id}}/feedback",
        give_feedback,
        methods=["POST"],
        dependencies=list(dependencies),
        summary="Give feedback on a served execution",
        name="give_feedback",
    )
    router.add_api_route(
        f"{prefix}/{{program_id}}/feedback",
        feedback_figures,
        methods=["GET"],
        dependencies=list(dependencies),
        summary="Feedback figures per program version",
        name="feedback_figures",
    )
