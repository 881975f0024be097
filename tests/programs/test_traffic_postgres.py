"""Traffic capture in PostgreSQL (LLM_SERVER_PROGRAM_STORE): what every replica shares."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import dspy
import httpx
import pytest
from fastapi import Depends, FastAPI

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ExecutionNotFoundError
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
    tenant_header,
)
from llm_server.testing import LocalProvider, StaticConfigProvider
from llm_server.traffic import (
    CapturedRequest,
    CaptureOptions,
    Execution,
    PostgresTrafficStore,
    TrafficRecorder,
    add_feedback_routes,
    enable_capture,
    feedback_summary,
    traffic_dataset,
)

pytestmark = pytest.mark.anyio


class Echo(dspy.Signature):
    """Echo the text."""

    text: str = dspy.InputField()
    secret: str = dspy.InputField()
    reply: str = dspy.OutputField()


def _app(provider: LocalProvider, tmp_path: Path, url: str, schema: str) -> FastAPI:
    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[None]:
        options = CaptureOptions(redact_fields=frozenset({"secret"}))
        enable_capture(app.state.program_manager, "echo", options)
        yield

    settings = FrameworkSettings(
        otel_enabled=False,
        llm_programs_dir=tmp_path / "programs",
        retry_max_attempts=1,
        program_store=url,
        program_store_schema=schema,
    )
    models = {
        "m": {"model_name": "openai/m", "api_base": provider.openai_api_base, "api_key": "sk-x1"}
    }
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Echo],
            settings=settings,
            config_provider=StaticConfigProvider(models),
            lifespan=host,
        ),
        dependencies=[Depends(tenant_header())],
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    add_program_endpoint(app, "echo", signature=Echo, default_model_id="m")
    add_feedback_routes(app)
    return app


async def test_captures_and_feedback_live_in_postgres_for_every_replica(
    private_postgres: str, pg_schema: str, tmp_path: Path
) -> None:
    with LocalProvider() as provider:
        app = _app(provider, tmp_path, private_postgres, pg_schema)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            served = []
            for i, tenant in enumerate(["acme", "acme", "beta"]):
                response = await client.post(
                    "/programs/echo",
                    json={"text": f"t{i}", "secret": "hunter22"},
                    headers={"X-Tenant-ID": tenant},
                )
                assert response.status_code == 200, response.text
                served.append(response.json())
            recorder = app.state.program_manager.traffic
            assert isinstance(recorder.store, PostgresTrafficStore)
            assert await recorder.aflush(10)
            # Another replica: its own recorder on the same database takes the feedback.
            other = TrafficRecorder(PostgresTrafficStore(private_postgres, schema=pg_schema))
            other.enable("echo", CaptureOptions())
            try:
                for body, score in zip(served, [1.0, 0.0, 1.0], strict=True):
                    other.add_feedback("echo", body["metadata"]["execution_id"], score=score)
                with pytest.raises(ExecutionNotFoundError):
                    other.add_feedback("echo", "unknown", score=1)
                figures = feedback_summary(recorder, "echo")
                captures = recorder.store.captures("echo")
                dataset = traffic_dataset(recorder, "echo", min_score=1.0)
                deleted = other.forget("acme")
                left = recorder.store.captures("echo")
                expired = recorder.store.delete_served_before("echo", float("inf"))
            finally:
                other.close()
    assert [(c.execution_id, c.outputs) for c in captures] == [
        (b["metadata"]["execution_id"], b["data"]) for b in served
    ]
    assert all(c.inputs["secret"] == "[REDACTED]" for c in captures)
    assert [c.input_tokens for c in captures] == [
        b["metadata"]["performance"]["tokens"]["input"] for b in served
    ]
    assert {v: (f.count, f.mean_score) for v, f in figures.items()} == {"1.0.0": (3, 2 / 3)}
    assert [e.text for e in dataset] == ["t0", "t2"]
    assert deleted == 2 + 2  # acme's captures (which hold their executions) and feedback
    assert [c.tenant for c in left] == ["beta"]
    assert expired == 2  # beta's capture and feedback


def test_captured_values_read_back_from_postgres_as_they_were(
    private_postgres: str, pg_schema: str
) -> None:
    # NaN, a 70-bit integer and a float subclass each take another path through the JSON
    # encoding than plain text (tests/traffic/test_capture.py has the cases one by one)
    class Float(float):
        pass

    inputs = {"nan": math.nan, "big": 2**70, "float": Float(1.5), "none": None, "text": "é"}
    capture = CapturedRequest(
        "e1", "echo", "1.0.0", False, "m", inputs, {"reply": "r"},
        1, 1, None, 1.0, None, None, 100.0,
    )  # fmt: skip
    store = PostgresTrafficStore(private_postgres, schema=pg_schema)
    try:
        store.write([Execution("e1", "echo", "1.0.0", None, 100.0)], [capture])
        (stored,) = store.captures("echo")
    finally:
        store.close()
    read = dict(stored.inputs)
    assert math.isnan(read.pop("nan"))
    assert read == {"big": 2**70, "float": 1.5, "none": None, "text": "é"}
    assert type(read["float"]) is float
