"""Feedback over real HTTP: stored with the version that answered, figures per version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dspy
import httpx
from _traffic_helpers import Answer, build_app
from fastapi import Depends, FastAPI, HTTPException, Request

from _uvicorn_thread import uvicorn_thread
from llm_server.testing import LocalProvider
from llm_server.traffic import CaptureOptions, add_feedback_routes, feedback_summary


def _ask(client: httpx.Client, question: str) -> str:
    response = client.post("/programs/answer", json={"question": question, "email": "e"})
    assert response.status_code == 200, response.text
    return str(response.json()["metadata"]["execution_id"])


def _feedback(client: httpx.Client, execution_id: str, **verdict: Any) -> httpx.Response:
    return client.post("/programs/answer/feedback", json={"execution_id": execution_id, **verdict})


def test_feedback_reaches_the_per_version_figures(provider: LocalProvider, tmp_path: Path) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        first = [_ask(client, f"q{i}") for i in range(3)]
        pm = app.state.program_manager
        assert pm.traffic.flush(10)
        released_at = time.time()
        better = dspy.Predict(Answer)
        better.demos = [dspy.Example(question="q", email="e", answer="a")]
        assert pm.save_program_version("answer", better).version == "1.1.0"
        second = [_ask(client, f"r{i}") for i in range(2)]
        verdicts = [
            (first[0], {"score": 1.0, "label": "good"}),
            (first[1], {"score": 0.0, "label": "wrong"}),
            (first[2], {"label": "good", "comment": "fine"}),
            (second[0], {"score": 1.0}),
            (second[1], {"score": 0.5, "label": "good"}),
        ]
        for execution_id, verdict in verdicts:
            response = _feedback(client, execution_id, **verdict)
            assert response.status_code == 200, response.text
        assert _feedback(client, first[0], score=1).json()["data"]["version"] == "1.0.0"
        figures = client.get("/programs/answer/feedback").json()["data"]
        summary = feedback_summary(pm, "answer")
        later = feedback_summary(pm, "answer", since=released_at)
    assert figures == {
        "1.0.0": {"count": 4, "scored": 3, "mean_score": 2 / 3, "labels": {"good": 2, "wrong": 1}},
        "1.1.0": {"count": 2, "scored": 2, "mean_score": 0.75, "labels": {"good": 1}},
    }
    assert {v: f.as_dict() for v, f in summary.items()} == figures
    assert set(later) == {"1.1.0"}  # only executions served since the new version
    assert later["1.1.0"].count == 2


def test_feedback_on_a_request_that_was_not_captured_keeps_ids_and_version(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=0.0))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        execution_id = _ask(client, "q")
        response = _feedback(client, execution_id, score=0.25)  # before the writer ran, maybe
        recorder = app.state.program_manager.traffic
        assert recorder.flush(10)
        captures = recorder.store.captures("answer")
        stored = recorder.store.feedback("answer")
    assert response.status_code == 200, response.text
    assert captures == []
    assert [(f.execution_id, f.version, f.score) for f in stored] == [(execution_id, "1.0.0", 0.25)]


def test_unknown_execution_ids_and_bad_verdicts_get_the_error_envelope(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        unknown = _feedback(client, "no-such-execution", score=1)
        other_program = client.post(
            "/programs/summarize/feedback", json={"execution_id": "x", "score": 1}
        )
        empty = _feedback(client, _ask(client, "q"))
    assert unknown.status_code == 404
    assert unknown.json()["success"] is False
    assert unknown.json()["error"]["type"] == "execution_not_found"
    assert "no-such-execution" in unknown.json()["error"]["message"]
    assert other_program.status_code == 404
    assert other_program.json()["error"]["type"] == "execution_not_found"
    assert empty.status_code == 400
    assert empty.json()["error"]["type"] == "bad_input"


def test_feedback_routes_are_guarded_by_the_hosts_dependencies(
    provider: LocalProvider, tmp_path: Path
) -> None:
    async def require_token(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer ok":
            raise HTTPException(status_code=401, detail="no")

    app: FastAPI = build_app(provider, tmp_path, CaptureOptions(), feedback_routes=False)
    add_feedback_routes(app, dependencies=[Depends(require_token)])
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        execution_id = _ask(client, "q")
        refused = _feedback(client, execution_id, score=1)
        accepted = client.post(
            "/programs/answer/feedback",
            json={"execution_id": execution_id, "score": 1},
            headers={"Authorization": "Bearer ok"},
        )
        figures = client.get("/programs/answer/feedback")
    assert refused.status_code == 401
    assert accepted.status_code == 200, accepted.text
    assert figures.status_code == 401
