"""(T) One program served three times: without traffic capture, with capture at 100 %, and
with capture at 100 % plus an online evaluation (a judge program) of a tenth of it.

``POST /programs/predictor`` does not capture; ``POST /programs/captured`` runs the same
signature with ``CaptureOptions(sample_rate=1.0)`` (SQLite in a temporary folder, the writer
thread and its batches included); ``POST /programs/judged`` also scores 10 % of its captures
with a DSPy judge program on the model manager's ``gpt-4o-mini`` (through its breaker, limits
and costs, on the budget tenant ``bench-judge``), in the background. So a load on each path
measures what capture, and capture with a judge, cost a request. ``GET /bench/judged`` waits
until the queued captures are written and judged, and answers how many were scored and
skipped (of those, skipped because the loop stayed busy), and how many had been scored when
the load ended (counted since startup). Runs from a folder holding the
reference app's ``config/``.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dspy
from fastapi import FastAPI, Request

from llm_server.core.config import FrameworkSettings
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.models.predictor import Predictor
from llm_server.traffic import CaptureOptions, OnlineEvaluation, enable_capture

JUDGE_SAMPLE_RATE = 0.1


class Captured(Predictor):
    """The same program under another id, with its traffic captured."""


class Judged(Predictor):
    """The same program under a third id, captured and a sample of it judged."""


class Grade(dspy.Signature):  # type: ignore[misc]  # dspy ships no type information
    """Grade the output given for the input."""

    input: str = dspy.InputField()
    output: str = dspy.InputField()
    score: float = dspy.OutputField()


@asynccontextmanager
async def capture(app: FastAPI) -> AsyncIterator[None]:
    pm = app.state.program_manager
    enable_capture(pm, "captured", CaptureOptions(sample_rate=1.0))
    judge = OnlineEvaluation(
        judge=Grade, model_id="gpt-4o-mini", tenant="bench-judge", sample_rate=JUDGE_SAMPLE_RATE
    )
    enable_capture(pm, "judged", CaptureOptions(sample_rate=1.0, evaluation=judge))
    yield


_folder = tempfile.mkdtemp(prefix="llm-server-bench-t-")
app = FastAPI(
    lifespan=llm_server_lifespan(
        programs=[Predictor, Captured, Judged],
        settings=FrameworkSettings(llm_programs_dir=f"{_folder}/programs"),
        lifespan=capture,
    )
)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
for program_id, signature in (("predictor", Predictor), ("captured", Captured), ("judged", Judged)):
    add_program_endpoint(app, program_id, signature=signature, default_model_id="gpt-4o-mini")


@app.get("/bench/judged")
async def judged(request: Request) -> dict[str, Any]:
    """Wait for the queued captures and judgements; how many were scored and skipped."""
    traffic = request.app.state.program_manager.traffic
    during_load = traffic.evaluation_counts("judged")["scored"]
    await traffic.aflush()
    summary = await traffic.afeedback_summary("judged", kind="judge")
    counts = traffic.evaluation_counts("judged")
    return {
        "scored": sum(v.count for v in summary.values()),
        "skipped": counts["skipped"],
        "skipped_busy": counts["skipped_busy"],
        "scored_during_load": during_load,
        "captures_dropped": traffic.dropped,
    }
