"""(R) The floor: forward the request to the provider with one shared ``httpx.AsyncClient``.

No DSPy: the prompt goes out as one chat message and the answer's text comes back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from ._common import MODEL, PredictionRequest, provider_api_base

_state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # httpx's default pool (100 connections), as a hand-written forwarder has it. Note: httpcore
    # scans every pooled connection per request, so above ~50 concurrent requests this "floor"
    # spends more CPU per request than DSPy's own client (see docs/benchmarks.md).
    async with httpx.AsyncClient(base_url=provider_api_base()) as client:
        _state["client"] = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
async def predict(request: PredictionRequest) -> dict[str, Any]:
    reply = await _state["client"].post(
        "/chat/completions",
        json={
            "model": MODEL.split("/", 1)[1],
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": 3000,
            "temperature": 0.7,
        },
        headers={"Authorization": "Bearer test"},
    )
    reply.raise_for_status()
    text = reply.json()["choices"][0]["message"]["content"]
    return {"success": True, "data": {"response": text}}
