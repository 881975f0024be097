"""(T) One program served twice: without traffic capture and with capture at 100 %.

``POST /programs/predictor`` does not capture; ``POST /programs/captured`` runs the same
signature with ``CaptureOptions(sample_rate=1.0)`` (SQLite in a temporary folder, the writer
thread and its batches included), so a load on each path measures what capture costs a
request. Runs from a folder holding the reference app's ``config/``.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llm_server.core.config import FrameworkSettings
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.models.predictor import Predictor
from llm_server.traffic import CaptureOptions, enable_capture


class Captured(Predictor):
    """The same program under another id, with its traffic captured."""


@asynccontextmanager
async def capture(app: FastAPI) -> AsyncIterator[None]:
    enable_capture(app.state.program_manager, "captured", CaptureOptions(sample_rate=1.0))
    yield


_folder = tempfile.mkdtemp(prefix="llm-server-bench-t-")
app = FastAPI(
    lifespan=llm_server_lifespan(
        programs=[Predictor, Captured],
        settings=FrameworkSettings(llm_programs_dir=f"{_folder}/programs"),
        lifespan=capture,
    )
)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
add_program_endpoint(app, "predictor", signature=Predictor, default_model_id="gpt-4o-mini")
add_program_endpoint(app, "captured", signature=Captured, default_model_id="gpt-4o-mini")
