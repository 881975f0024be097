"""Capture covers every route a program is served on, and opts in by registration too."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from _learner import Sentiment
from _traffic_helpers import build_app, settings_for

from _uvicorn_thread import uvicorn_thread
from llm_server.core.errors import ConfigurationError
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.fastapi import add_openai_routes
from llm_server.models.manager import ModelManager
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider, StaticConfigProvider
from llm_server.traffic import CaptureOptions, OnlineEvaluation, SqliteTrafficStore


def test_openai_routes_are_captured_streamed_or_not(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(), program=Sentiment)
    add_openai_routes(app, programs={"sentiment": Sentiment}, default_model_id="gpt-4o-mini")
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        ids = []
        for stream in (False, True):
            response = client.post(
                "/v1/chat/completions",
                json={
                    "model": "sentiment",
                    "stream": stream,
                    "messages": [{"role": "user", "content": f"good day {stream}"}],
                },
            )
            assert response.status_code == 200, response.text
            first = response.text if stream else response.json()["id"]
            ids.append(first.split('"id":"chatcmpl-', 1)[-1].split('"', 1)[0] if stream else first)
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        captures = recorder.store.captures("sentiment")
    assert [c.inputs for c in captures] == [{"text": "good day False"}, {"text": "good day True"}]
    assert [f"chatcmpl-{c.execution_id}" for c in captures[:1]] == ids[:1]
    assert captures[1].execution_id == ids[1]
    assert all(c.outputs and c.outputs["label"] for c in captures)


def test_register_program_with_capture_uses_the_capture_path_setting(
    provider: LocalProvider, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, capture_path=tmp_path / "elsewhere" / "t.sqlite3")
    models = ModelManager(
        config_provider=StaticConfigProvider(
            {"m": {"model_name": "openai/m", "api_base": provider.openai_api_base}}
        ),
        settings=settings,
    )
    programs = ProgramManager(
        model_manager=models, storage_adapter=FileSystemStorageAdapter(tmp_path / "programs")
    )
    programs.register_program(Sentiment, capture=CaptureOptions(sample_rate=0.5))
    try:
        assert isinstance(programs.traffic.store, SqliteTrafficStore)
        assert programs.traffic.store.path == str(tmp_path / "elsewhere" / "t.sqlite3")
        assert programs.traffic.options("sentiment").sample_rate == 0.5
    finally:
        programs.traffic.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CaptureOptions(sample_rate=1.5), "sample_rate"),
        (lambda: CaptureOptions(retention_days=0), "retention_days"),
        (lambda: CaptureOptions(redact_fields="email"), "redact_fields"),  # type: ignore[arg-type]
        (OnlineEvaluation, "exactly one of metric= or judge="),
        (lambda: OnlineEvaluation(judge=Sentiment), "model_id="),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()  # type: ignore[operator]


def test_a_streamed_request_that_fails_is_captured_with_its_error(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(), program=Sentiment)
    provider.add_fault("bad_request", first=1)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/programs/sentiment/stream", json={"text": "bad day"})
        assert response.status_code == 502, response.text  # before its first event
        execution_id = response.headers["X-Execution-ID"]
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        (capture,) = recorder.store.captures("sentiment")
    assert capture.execution_id == execution_id
    assert capture.inputs == {"text": "bad day"}
    assert capture.outputs is None
    assert capture.error_type == response.json()["error"]["type"]


def test_the_streamed_program_route_is_captured_with_its_envelope(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(), program=Sentiment)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/programs/sentiment/stream", json={"text": "good day"})
        assert response.status_code == 200, response.text
        done = json.loads(response.text.split("event: done\ndata: ", 1)[1].split("\n", 1)[0])
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        (capture,) = recorder.store.captures("sentiment")
    assert capture.execution_id == done["metadata"]["execution_id"]
    assert capture.inputs == {"text": "good day"}
    assert capture.outputs == done["data"]
    assert capture.input_tokens == done["metadata"]["performance"]["tokens"]["input"]


def test_openai_streams_that_fail_are_captured_and_counted_before_and_after_a_piece(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(), program=Sentiment)
    add_openai_routes(app, programs={"sentiment": Sentiment}, default_model_id="gpt-4o-mini")

    def ask(client: httpx.Client, text: str) -> httpx.Response:
        return client.post(
            "/v1/chat/completions",
            json={"model": "sentiment", "stream": True,
                  "messages": [{"role": "user", "content": text}]},
        )  # fmt: skip

    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        provider.add_fault("bad_request", first=1)
        refused = ask(client, "bad day")
        assert refused.status_code == 502, refused.text  # before its first piece
        provider.cut_streams_after = 3
        provider.chunk_delay_s = 0.05
        try:
            cut = ask(client, "a long day " * 20)
        finally:
            provider.cut_streams_after = None
            provider.chunk_delay_s = 0.0
        assert cut.status_code == 200, cut.text  # the error came after a piece
        assert '"error"' in cut.text, cut.text
        assert ask(client, "good day").status_code == 200
        manager = app.state.program_manager
        assert manager.traffic.flush(10)
        captures = manager.traffic.store.captures("sentiment")
        version = str(manager.registry.get_program_metadata("sentiment").version)
        figures = manager.version_stats.local("sentiment", version)
    assert [(c.inputs["text"][:9], c.outputs is None) for c in captures] == [
        ("bad day", True), ("a long da", True), ("good day", False)
    ]  # fmt: skip
    assert all(c.error_type for c in captures[:2])
    assert captures[2].error_type is None
    assert (figures.requests, figures.failures) == (3, 2), figures.errors
