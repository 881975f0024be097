"""Feedback in the canary figures and the guard, over real HTTP (LocalProvider)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from _traffic_helpers import Answer, build_app
from fastapi import Depends, FastAPI

from _uvicorn_thread import uvicorn_thread
from llm_server.fastapi import add_release_routes, health_router
from llm_server.models.canary import Canary, CanaryGuard
from llm_server.programs import _canary_control
from llm_server.testing import LocalProvider
from llm_server.traffic import CaptureOptions


def _no_check() -> None:
    """The release routes' credentials check (the test app is private)."""


def _app(provider: LocalProvider, tmp_path: Path) -> FastAPI:
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0))
    app.include_router(health_router())
    add_release_routes(app, dependencies=[Depends(_no_check)])
    return app


def _second_version(app: FastAPI) -> str:
    """Save 1.1.0 (a demo) and serve 1.0.0 again; the canary's version."""
    pm = app.state.program_manager
    tuned = dspy.Predict(Answer)
    tuned.demos = [dspy.Example(question="q", email="e", answer="a")]
    saved = pm.save_program_version("answer", tuned)
    pm.promote("answer", "1.0.0", actor="test", reason="serve the first version again")
    return str(saved.version)


def _serve(client: httpx.Client, requests: int) -> list[tuple[str, str]]:
    """Serve ``requests``; ``(execution_id, version that answered)`` of each."""
    served = []
    for i in range(requests):
        response = client.post("/programs/answer", json={"question": f"q{i}", "email": "e"})
        assert response.status_code == 200, response.text
        metadata = response.json()["metadata"]
        served.append((str(metadata["execution_id"]), str(metadata["program"]["version"])))
    return served


def _score(client: httpx.Client, execution_id: str, score: float) -> None:
    response = client.post(
        "/programs/answer/feedback", json={"execution_id": execution_id, "score": score}
    )
    assert response.status_code == 200, response.text


def _ended(pm: Any, timeout_s: float) -> Canary | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last: Canary = pm.canaries("answer")[-1]
        if last.ended_at is not None:
            return last
        time.sleep(0.1)
    return None


def test_feedback_on_stable_and_canary_shows_in_the_figures_per_version(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = _app(provider, tmp_path)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        pm = app.state.program_manager
        canary_version = _second_version(app)
        (before_id, _), *_ = _serve(client, 1)
        _score(client, before_id, 0.0)  # served before the canary: not in its period
        pm.start_canary("answer", canary_version, weight=0.5, actor="ana")
        served = _serve(client, 24)
        versions = {version for _, version in served}
        assert versions == {"1.0.0", canary_version}
        expected: dict[str, list[float]] = {"1.0.0": [], canary_version: []}
        for n, (execution_id, version) in enumerate(served):
            if n % 4 == 3:
                continue  # no feedback on a quarter
            score = (0.8 if n % 2 else 1.0) if version == "1.0.0" else 0.25
            _score(client, execution_id, score)
            expected[version].append(score)
        judged = served[0]
        pm.traffic.add_feedback("answer", judged[0], score=7.0, kind="judge")
        listed = client.get("/programs").json()["programs"]
        figures = next(p for p in listed if p["id"] == "answer")["figures"]
        watched = client.get("/admin/programs/answer/canary").json()["figures"]
    assert watched == figures
    for side in ("stable", "canary"):
        version = figures[side]["version"]
        human = figures[side]["feedback"]["human"]
        assert human["count"] == human["scored"] == len(expected[version])
        assert abs(human["mean_score"] - sum(expected[version]) / len(expected[version])) < 1e-6
        judge = figures[side]["feedback"]["judge"]
        if version == judged[1]:
            assert judge == {"count": 1, "scored": 1, "mean_score": 7.0}
        else:
            assert judge == {"count": 0, "scored": 0, "mean_score": None}


def test_a_canary_with_clearly_worse_feedback_is_rolled_back_with_the_reason(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = _app(provider, tmp_path)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        pm = app.state.program_manager
        canary_version = _second_version(app)
        guard = CanaryGuard(max_score_drop=0.3, min_scored_feedback=5, min_requests=10_000)
        pm.start_canary("answer", canary_version, weight=0.5, guard=guard, actor="ana")
        served = _serve(client, 30)
        counts = {v: sum(1 for _, s in served if s == v) for v in ("1.0.0", canary_version)}
        assert min(counts.values()) >= 5, counts
        for execution_id, version in served:
            _score(client, execution_id, 0.9 if version == "1.0.0" else 0.2)
        ended = _ended(pm, timeout_s=10.0)
    assert ended is not None, "the guard did not roll back"
    assert (ended.outcome, ended.ended_by) == ("rollback", "canary-guard")
    assert ended.end_reason is not None
    assert "feedback mean score 0.2" in ended.end_reason
    assert "stable 0.9" in ended.end_reason


def test_without_enough_scored_feedback_the_guard_does_not_end_the_canary(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_canary_control, "FEEDBACK_EVERY_S", 0.3)  # 2 s in production
    app = _app(provider, tmp_path)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        pm = app.state.program_manager
        canary_version = _second_version(app)
        guard = CanaryGuard(max_score_drop=0.3, min_scored_feedback=50, min_requests=10_000)
        pm.start_canary("answer", canary_version, weight=0.5, guard=guard, actor="ana")
        served = _serve(client, 20)
        for execution_id, version in served:  # as bad as above, but too few scored
            _score(client, execution_id, 0.9 if version == "1.0.0" else 0.2)
        still = _ended(pm, timeout_s=1.5)  # over four feedback reads (every 0.3 s here)
        figures = pm.canary_figures("answer")
    assert still is None
    assert figures["canary"]["feedback"]["human"]["mean_score"] == 0.2
