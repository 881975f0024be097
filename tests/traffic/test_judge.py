"""Online evaluation runs in the background, on its own budget tenant, never on the request."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from _traffic_helpers import build_app

from llm_server.core.budgets import Budget
from llm_server.testing import LocalProvider
from llm_server.traffic import CaptureOptions, OnlineEvaluation, feedback_summary

pytestmark = pytest.mark.anyio


class Grade(dspy.Signature):
    """Grade the answer to the question."""

    question: str = dspy.InputField()
    answer: str = dspy.InputField()
    score: float = dspy.OutputField()
    label: str = dspy.OutputField()


async def test_a_judge_scores_in_the_background_on_its_own_budget(
    provider: LocalProvider, tmp_path: Path
) -> None:
    provider.script(reply={"score": "0.75", "label": "fine"}, model="judge-model")
    provider.add_latency(0.5, model="judge-model")  # a slow judge must not slow a request
    evaluation = OnlineEvaluation(judge=Grade, model_id="judge-model", tenant="judges")
    app = build_app(provider, tmp_path, CaptureOptions(evaluation=evaluation))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        budgets = app.state.model_manager.budgets
        for tenant in ("acme", "judges"):
            budgets.set_budget(tenant, "day", Budget(cost_usd=100))
        tokens = 0
        for i in range(5):
            started = time.perf_counter()
            response = await client.post(
                "/programs/answer",
                json={"question": f"q{i}", "email": "e"},
                headers={"X-Tenant-ID": "acme"},
            )
            assert response.status_code == 200
            if i:  # the first request warms DSPy up; each later one has judges in flight
                assert time.perf_counter() - started < 0.5  # the judge's 0.5 s is not in it
            tokens += response.json()["metadata"]["performance"]["tokens"]["total"]
        recorder = app.state.program_manager.traffic
        assert await recorder.aflush(20)
        acme = (await budgets.usage("acme"))["day"][0]
        judges = (await budgets.usage("judges"))["day"][0]
        judged = feedback_summary(app.state.program_manager, "answer", kind="judge")
        human = feedback_summary(app.state.program_manager, "answer", kind="human")
    judge_calls = [r for r in provider.requests if r.model and r.model.endswith("judge-model")]
    assert len(judge_calls) == 5
    assert judged["1.0.0"].count == 5
    assert judged["1.0.0"].mean_score == 0.75
    assert dict(judged["1.0.0"].labels) == {"fine": 5}
    assert human == {}
    assert acme.requests == 5
    assert acme.tokens == tokens  # the request tenant pays for its requests only
    assert judges.requests == 5
    assert judges.tokens > 0
    assert judges.cost_usd > 0


async def test_a_metric_scores_a_sample_of_captured_requests(
    provider: LocalProvider, tmp_path: Path
) -> None:
    def length_metric(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> float:
        return float(len(str(outputs["answer"])) > len(str(inputs["question"])))

    # judgements spaced 5 ms apart (0.05 s by default: 5 s for these 100; spacing has its own test)
    evaluation = OnlineEvaluation(metric=length_metric, sample_rate=0.5, spacing_s=0.005)
    app = build_app(provider, tmp_path, CaptureOptions(evaluation=evaluation))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        for i in range(200):
            response = await client.post(
                "/programs/answer", json={"question": f"q{i}", "email": "e"}
            )
            assert response.status_code == 200
        recorder = app.state.program_manager.traffic
        assert await recorder.aflush(20)
        judged = feedback_summary(app.state.program_manager, "answer", kind="judge")
    # Binomial(200, 0.5): sd 7.1; 5 sd either side.
    assert abs(judged["1.0.0"].count - 100) <= 36
    assert judged["1.0.0"].mean_score == 1.0  # the echo is longer than the question
