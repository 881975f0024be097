"""(H) The best practice without the library: ``Predict.acall`` under ``dspy.context(lm=...)``.

One ``dspy.LM`` built at startup, DSPy's shared history off (it grows without bound and costs
CPU), the model set per request with ``dspy.context`` (never ``dspy.configure`` per request).
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
    dspy.configure(disable_history=True)
    _state["lm"] = make_lm()
    _state["program"] = dspy.Predict(predictor_signature())
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
async def predict(request: PredictionRequest) -> dict[str, Any]:
    with dspy.context(lm=_state["lm"]):
        result = await _state["program"].acall(input=request.prompt)
    return {"success": True, "data": {"response": result.output}}
