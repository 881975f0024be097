"""The shortest way to a served, observable program: the FastAPI integration.

Run offline from the repository's root with ``.venv/bin/python examples/serve.py
quickstart_app``, then open http://127.0.0.1:8000/docs: ``POST /programs/summarize`` takes the
signature's fields. With a real provider: delete ``api_base`` in ``config/model_config.yml``
beside this file, export the key and serve it from any folder::

    OPENAI_API_KEY=sk-... .venv/bin/uvicorn --app-dir examples/quickstart_app main:app
"""

from pathlib import Path

import dspy
from fastapi import FastAPI

from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    health_router,
    install_error_handlers,
    llm_server_lifespan,
)


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField(desc="The text to summarize")
    summary: str = dspy.OutputField(desc="A one-sentence summary")


app = FastAPI(
    title="Quickstart",
    lifespan=llm_server_lifespan(
        programs=[(Summarize, "Summarizer")],
        config_path=Path(__file__).resolve().parent / "config" / "model_config.yml",
    ),
)
install_error_handlers(app)  # errors become {"success": false, "error": {...}} with 4xx/5xx
app.add_middleware(RequestContextMiddleware)  # execution id, log context, one trace per request
app.include_router(health_router())  # /health/live, /health/ready, /models, /programs
add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
