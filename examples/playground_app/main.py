"""The playground: try every program, version and model from the browser.

Run it offline with ``.venv/bin/python examples/serve.py playground_app`` and open
http://127.0.0.1:8000/playground. Keep the page out of production (or behind your auth:
``add_playground(app, dependencies=[Depends(your_auth)])``).
"""

from typing import Literal

import dspy
from fastapi import FastAPI

from llm_server.fastapi import (
    RequestContextMiddleware,
    add_playground,
    add_program_endpoint,
    health_router,
    install_error_handlers,
    llm_server_lifespan,
)


class Brief(dspy.Signature):
    """Write a short brief on a topic, in about the given number of words."""

    topic: str = dspy.InputField(desc="What the brief is about")
    words: int = dspy.InputField(desc="About how many words")
    keywords: list[str] = dspy.InputField(desc="Words the brief should use")
    tone: Literal["plain", "formal", "playful"] = dspy.InputField(desc="How it should sound")
    brief: str = dspy.OutputField(desc="The brief")


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField(desc="The text to summarize")
    summary: str = dspy.OutputField(desc="A one-sentence summary")


app = FastAPI(
    title="Playground",
    lifespan=llm_server_lifespan(
        programs=[Brief, (Summarize, "Summarizer")], config_path="config/model_config.yml"
    ),
)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
app.include_router(health_router())
add_program_endpoint(app, "brief", signature=Brief, default_model_id="gpt-4o-mini", stream=True)
add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
add_playground(app)  # GET /playground
