"""(HS) A hand-written streaming endpoint without the library: ``dspy.streamify`` over SSE.

What a careful author writes from DSPy's documentation: one ``dspy.LM`` built at startup, a
stream listener per request (a reused one streams nothing after its first call, DSPy #8425),
the program on the loop (``is_async_program=True``), each piece as an SSE ``delta`` event and
the prediction as ``done``. Same request body as the guarded app's program route.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from llm_server._offline import ensure_offline

from .h_app import _state, lifespan

ensure_offline()

import dspy  # noqa: E402 -- after ensure_offline() on purpose
from dspy.streaming import StreamListener, StreamResponse  # noqa: E402


class Body(BaseModel):
    input: str
    model_id: str = "gpt-4o-mini"


app = FastAPI(lifespan=lifespan)  # H's: one LM and one Predict, built at startup


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


@app.post("/programs/predictor/stream")
async def stream(body: Body) -> StreamingResponse:
    listener = StreamListener(signature_field_name="output")
    streamer = dspy.streamify(_state["program"], stream_listeners=[listener], is_async_program=True)

    async def events() -> AsyncIterator[bytes]:
        with dspy.context(lm=_state["lm"]):
            async for value in streamer(input=body.input):
                if isinstance(value, StreamResponse) and value.chunk:
                    yield _event("delta", {"field": "output", "text": value.chunk})
                elif isinstance(value, dspy.Prediction):
                    yield _event("done", {"success": True, "data": {"output": value.output}})

    return StreamingResponse(events(), media_type="text/event-stream")
