"""A planted key appears nowhere, for every way a call can fail: logs at DEBUG, spans and their
events, metric labels, HTTP bodies and headers, and str, repr and the full traceback of every
error raised."""

from __future__ import annotations

import io
import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

import dspy
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError, LLMServerError
from llm_server.core.opentelemetry_integration import Telemetry
from llm_server.core.telemetry import configure_json_logging
from llm_server.defaults import FileSystemStorageAdapter, YamlConfigProvider
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
)
from llm_server.models.manager import ModelManager
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio

KEY = "sk-proj-PLANTEDsecret0123456789abcdefXYZ"
MARK = "PLANTEDsecret"


class Ask(dspy.Signature):
    """Answer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def printed(error: BaseException) -> str:
    return "\n".join([str(error), repr(error), "".join(traceback.format_exception(error))])


async def test_no_failure_lets_the_key_out(
    make_telemetry: Callable[..., Telemetry],
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    tmp_path: Path,
) -> None:
    stream = io.StringIO()
    configure_json_logging(stream=stream, level=logging.DEBUG)
    seen: list[str] = []
    with LocalProvider() as provider:
        base = {"api_base": provider.openai_api_base, "api_key": KEY, "retry": {"max_attempts": 1}}
        models = {
            "auto": {"model_name": "openai/gpt-4o-mini", "engine": "auto", **base},
            "litellm": {"model_name": "openai/gpt-4o-mini", "engine": "litellm", **base},
            "tiny": {"model_name": "openai/gpt-4o-mini", "context_window": 200, **base},
        }
        manager = ModelManager(
            config_provider=StaticConfigProvider(models),
            settings=FrameworkSettings(request_deadline_s=0.5, otel_enabled=True),
            environ={},
            telemetry=make_telemetry(otel_capture_message_content=True),
        )
        programs = ProgramManager(
            model_manager=manager, storage_adapter=FileSystemStorageAdapter(tmp_path / "p")
        )
        programs.register_program(Ask)
        app = FastAPI()
        install_error_handlers(app)
        app.add_middleware(RequestContextMiddleware)
        add_program_endpoint(
            app, "ask", signature=Ask, default_model_id="auto", program_manager=programs
        )
        scenarios = [
            ("auto", 401, "question"),
            ("litellm", 401, "question"),
            ("auto", 400, "question"),
            ("litellm", 400, "question"),
            ("auto", "hang", "question"),  # cut by the request deadline
            ("tiny", None, "word " * 300),  # cannot fit: refused before sending
        ]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for model_id, fault, question in scenarios:
                provider.clear_faults()
                if fault is not None:
                    provider.add_fault(fault, message=f"Incorrect API key provided: {KEY}")
                # the raised error, straight from the model-call stack
                backend = manager.reliable_backend(dspy.Predict(Ask), model_id)
                with pytest.raises(LLMServerError) as info:
                    await backend.predict({"question": question})
                seen.append(printed(info.value))
                # the same over HTTP
                response = await client.post(
                    "/programs/ask", json={"question": question, "model_id": model_id}
                )
                assert response.status_code >= 400
                seen.append(response.text)
                seen.append(json.dumps(dict(response.headers)))
        await manager.aclose()

    # a key of the wrong type in the YAML
    config = tmp_path / "models.yml"
    config.write_text(f'models:\n  m:\n    model_name: openai/x\n    api_key: ["{KEY}"]\n')
    with pytest.raises(ConfigurationError) as info:
        YamlConfigProvider(config).load()
    seen.append(printed(info.value))

    spans = exporter.get_finished_spans()
    for span in spans:
        seen.append(json.dumps(dict(span.attributes or {}), default=str))
        seen.append(str(span.status.description))
        seen.extend(json.dumps(dict(e.attributes or {}), default=str) for e in span.events)
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                seen.extend(str(dict(p.attributes)) for p in metric.data.data_points)
    seen.append(stream.getvalue())

    everything = "\n".join(seen)
    # The scenarios really ran: provider words, deadlines, window refusals, DEBUG tracebacks.
    assert "Incorrect API key provided" in everything
    assert "deadline_exceeded" in everything
    assert "context_window_exceeded" in everything
    assert "Traceback" in stream.getvalue()
    assert len(spans) >= 6
    assert MARK not in everything
