"""(D) DSPy's documented deployment pattern: ``dspy.asyncify(program)`` with default settings.

As in DSPy's "Deploying" tutorial: the LM set once with ``dspy.configure``, the program wrapped
in ``dspy.asyncify`` (worker threads, at most ``async_max_workers`` = 8 by default) and awaited.
The LM is built like H's (cache off) so that only the calling pattern differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from llm_server._offline import ensure_offline

from ._common import PredictionRequest, make_lm, predictor_signature

ensure_offline()

import dspy  # noqa: E402 -- after ensure_offline() on purpose

_state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    dspy.configure(lm=make_lm())
    _state["program"] = dspy.asyncify(dspy.Predict(predictor_signature()))
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
async def predict(request: PredictionRequest) -> dict[str, Any]:
    result = await _state["program"](input=request.prompt)
    return {"success": True, "data": {"response": result.output}}
