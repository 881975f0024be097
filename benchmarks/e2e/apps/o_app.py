"""(O) The library's program route and its OpenAI-compatible route, in one app.

``POST /programs/predictor`` (``add_program_endpoint``) and ``POST /v1/chat/completions``
(``add_openai_routes``, ``model: "predictor"``) run the same program on the same model stack,
so a load on each path measures what the OpenAI mapping costs. Runs from a folder holding the
reference app's ``config/``.
"""

from __future__ import annotations

from fastapi import FastAPI

from llm_server.fastapi import (
    RequestContextMiddleware,
    add_openai_routes,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.models.predictor import Predictor

app = FastAPI(lifespan=llm_server_lifespan(programs=[Predictor]))
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
add_program_endpoint(app, "predictor", signature=Predictor, default_model_id="gpt-4o-mini")
add_openai_routes(app, programs={"predictor": Predictor}, default_model_id="gpt-4o-mini")
