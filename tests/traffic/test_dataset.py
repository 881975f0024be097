"""From traffic to a better version: feedback -> dataset -> optimize_program -> held-out score."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from _learner import Sentiment, exact, learner, truth
from _traffic_helpers import build_app

from _uvicorn_thread import uvicorn_thread
from llm_server.models.optimization import optimize_program
from llm_server.testing import LocalProvider
from llm_server.traffic import CaptureOptions, TrafficDataset, traffic_dataset

SHORT = ["good day", "bad day", "a good one", "a bad one", "good!", "meh", "so good", "nope"]
LONG = [
    "a good long story about many things",
    "a long and dull story about nothing much",
    "the food was good and the service too",
    "the food was cold and the service slow",
]
HELD_OUT = [
    dspy.Example(text=text, label=truth(text)).with_inputs("text")
    for text in [
        "a really good film with a fine cast",
        "the worst film I have seen this year",
        "good music and a good crowd tonight",
        "a boring afternoon in a boring place",
    ]
]


@pytest.fixture
def served(provider: LocalProvider, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """An app serving ``sentiment`` on the learner, with traffic and feedback given."""
    provider.script(reply=learner)
    app = build_app(provider, tmp_path, CaptureOptions(sample_rate=1.0), program=Sentiment)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for text in SHORT + LONG:
            body = client.post("/programs/sentiment", json={"text": text}).json()
            right = body["data"]["label"] == truth(text)
            verdict = {"score": float(right), "label": "right" if right else "wrong"}
            response = client.post(
                "/programs/sentiment/feedback",
                json={"execution_id": body["metadata"]["execution_id"], **verdict},
            )
            assert response.status_code == 200, response.text
        assert app.state.program_manager.traffic.flush(10)
        yield app, url


def _optimize(app: Any, dataset: TrafficDataset) -> Any:
    return optimize_program(
        app.state.program_manager,
        app.state.model_manager,
        "sentiment",
        optimizer=dspy.LabeledFewShot(k=32),
        trainset=dataset,
        devset=HELD_OUT,
        metric=exact,
        model_id="gpt-4o-mini",
    )


def test_a_dataset_from_good_traffic_trains_a_better_version(served: tuple[Any, str]) -> None:
    app, _ = served
    pm = app.state.program_manager
    dataset = traffic_dataset(pm, "sentiment", min_score=1.0)
    assert len(dataset) == len(SHORT)  # the served version is right on short texts only
    assert all(set(example.inputs().keys()) == {"text"} for example in dataset)
    assert {example.text: example.label for example in dataset} == {t: truth(t) for t in SHORT}
    run = _optimize(app, dataset)
    assert run.score_before == 0.0
    assert run.score_after == 100.0
    recorded = pm.get_version_metadata("sentiment", run.version).evaluation["trainset_source"]
    assert recorded == {
        "source": "traffic",
        "query": dict(dataset.query),
        "fingerprint": dataset.fingerprint,
        "size": len(SHORT),
    }
    assert dataset.query["min_score"] == 1.0


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"min_score": 2.0}, id="empty"),
        pytest.param({"label": "wrong"}, id="wrong-labels"),
    ],
)
def test_an_empty_or_wrong_dataset_does_not_train_a_better_version(
    served: tuple[Any, str], query: dict[str, Any]
) -> None:
    app, _ = served
    dataset = traffic_dataset(app.state.program_manager, "sentiment", **query)
    run = _optimize(app, dataset)
    assert run.score_after <= run.score_before  # so the test above fails on such a dataset


def test_the_fingerprint_follows_the_query_and_the_rows(served: tuple[Any, str]) -> None:
    app, _ = served
    pm = app.state.program_manager
    first = traffic_dataset(pm, "sentiment", min_score=1.0)
    again = traffic_dataset(pm, "sentiment", min_score=1.0)
    fewer = traffic_dataset(pm, "sentiment", min_score=1.0, limit=3)
    assert first.fingerprint == again.fingerprint
    assert fewer.fingerprint != first.fingerprint
    assert list(fewer.execution_ids) == list(first.execution_ids[-3:])
    out = io.StringIO()
    assert first.write_jsonl(out) == len(first)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["execution_id"] for line in lines] == list(first.execution_ids)
    assert lines[0]["inputs"] == {"text": SHORT[0]}
    assert lines[0]["outputs"] == {"label": truth(SHORT[0])}


@pytest.mark.parametrize(
    "console",
    [
        [sys.executable, "-m", "llm_server.traffic"],
        [str(Path(sys.executable).parent / "llm-server"), "traffic"],  # the installed command
    ],
    ids=["python -m llm_server.traffic", "llm-server traffic"],
)
def test_the_console_exports_jsonl(
    served: tuple[Any, str], tmp_path: Path, console: list[str]
) -> None:
    app, _ = served
    output = tmp_path / "out.jsonl"
    result = subprocess.run(
        [*console, "export", "sentiment",
         "--store", str(tmp_path / "programs" / "traffic.sqlite3"),
         "--min-score", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = traffic_dataset(app.state.program_manager, "sentiment", min_score=1.0)
    lines = output.read_text().splitlines()
    assert len(lines) == len(SHORT)
    assert [json.loads(line)["execution_id"] for line in lines] == list(expected.execution_ids)
    assert expected.fingerprint in result.stderr


def test_the_program_manager_builds_the_same_dataset_from_the_program_id(
    served: tuple[Any, str],
) -> None:
    app, _ = served
    pm = app.state.program_manager
    by_manager = pm.traffic_dataset("sentiment", min_score=1.0, limit=4)
    by_function = traffic_dataset(pm, "sentiment", min_score=1.0, limit=4)
    assert len(by_manager) == 4
    assert by_manager.fingerprint == by_function.fingerprint
    assert by_manager.execution_ids == by_function.execution_ids
    assert by_manager.query["min_score"] == 1.0
