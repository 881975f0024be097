"""A fleet: every worker of every replica shares breakers and rate limits through Redis.

Run it offline, Redis and the provider included, with one command from the repository's root::

    .venv/bin/python examples/fleet_app/run.py       # redis-server, the provider, 4 workers

or serve it yourself, from any folder (its configuration is found next to this file)::

    .venv/bin/uvicorn --app-dir examples/fleet_app main:app --workers 4

The app itself is the quickstart's: nothing in the code is about the fleet. Sharing is one
setting, ``LLM_SERVER_REDIS_URL``, and the limits are in ``config/model_config.yml``.
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
    title="Fleet",
    lifespan=llm_server_lifespan(
        programs=[(Summarize, "Summarizer")],
        config_path=Path(__file__).resolve().parent / "config" / "model_config.yml",
    ),
)
install_error_handlers(app)  # a refused call is a 429 (rate limit) or 503 (open breaker)
app.add_middleware(RequestContextMiddleware)
app.include_router(health_router())  # GET /models shows the shared state
add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
