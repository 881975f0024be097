"""The canary tests' app: the fleet example's program, plus admin routes behind a token."""

import os

import dspy
from fastapi import Depends, FastAPI, Header, HTTPException

from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    add_release_routes,
    health_router,
    install_error_handlers,
    llm_server_lifespan,
)


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField(desc="The text to summarize")
    summary: str = dspy.OutputField(desc="A one-sentence summary")


def admin_only(authorization: str | None = Header(default=None)) -> None:
    """The host's credentials check: a bearer token from the environment."""
    if authorization != f"Bearer {os.environ['ADMIN_TOKEN']}":
        raise HTTPException(status_code=401, detail="an admin token is required")


app = FastAPI(
    lifespan=llm_server_lifespan(
        programs=[(Summarize, "Summarizer")], config_path="config/model_config.yml"
    ),
)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
app.include_router(health_router())
add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
add_release_routes(app, dependencies=[Depends(admin_only)])
