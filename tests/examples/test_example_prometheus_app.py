"""The Prometheus app, served by uvicorn in its own process (the global MeterProvider is
set once per process): after some requests /metrics has the GenAI metrics with their values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _example_helpers import PYTHON, copy_example, free_port, running
from prometheus_client.parser import text_string_to_metric_families

from llm_server.testing import LocalProvider

REQUESTS = 5


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus samples by name: ``[(labels, value), ...]``."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def total(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    rows = found.get(name, [])
    return sum(v for got, v in rows if all(got.get(k) == want for k, want in labels.items()))


def test_metrics_endpoint_has_the_genai_metrics(provider: LocalProvider, tmp_path: Path) -> None:
    folder = copy_example("prometheus_app", tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"LLM_SERVER_PROVIDER_URL": provider.base_url}  # the app turns telemetry on itself
    command = [PYTHON, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)]
    envelopes = []
    log = tmp_path / "server.log"
    with (
        running(command, cwd=folder, env=env, url=f"{url}/docs", log=log),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        for n in range(REQUESTS):
            response = client.post("/predict", json={"prompt": f"question {n} " * (n + 1)})
            assert response.status_code == 200, response.text
            envelopes.append(response.json())
        failed = client.post("/predict", json={"prompt": "x", "model_id": "nope"})
        assert failed.status_code == 404
        metrics = client.get("/metrics")
        slashed = client.get("/metrics/")
    assert metrics.status_code == slashed.status_code == 200  # no redirect either way
    assert "gen_ai_client_operation_duration_seconds" in slashed.text
    found = samples(metrics.text)
    model = {"llm_server_model_id": "gpt-4o-mini"}

    duration = "gen_ai_client_operation_duration_seconds"
    assert total(found, f"{duration}_count", **model) == REQUESTS
    assert 0 < total(found, f"{duration}_sum", **model) < 30
    [(labels, _)] = [row for row in found[f"{duration}_count"] if row[0].get("llm_server_model_id")]
    assert labels["gen_ai_operation_name"] == "chat"
    assert labels["gen_ai_request_model"] == "gpt-4o-mini"

    tokens_in = sum(e["metadata"]["performance"]["tokens"]["input"] for e in envelopes)
    tokens_out = sum(e["metadata"]["performance"]["tokens"]["output"] for e in envelopes)
    usage = "gen_ai_client_token_usage"
    assert total(found, f"{usage}_sum", gen_ai_token_type="input", **model) == tokens_in
    assert total(found, f"{usage}_sum", gen_ai_token_type="output", **model) == tokens_out
    assert total(found, f"{usage}_count", gen_ai_token_type="input", **model) == REQUESTS

    cost = sum(e["metadata"]["performance"]["tokens"]["cost_usd"] for e in envelopes)
    assert total(found, "llm_server_client_cost_usd_total", **model) == pytest.approx(cost)

    assert "llm_server_circuit_breaker_state" in found
    # the default detail level: pipeline and step durations only at the "full" level
    assert "llm_server_pipeline_duration_seconds_count" not in found
    assert "llm_server_client_active_calls" not in found
    # the envelope's trace ids are real trace ids, one per request
    assert len({e["metadata"]["performance"]["trace_id"] for e in envelopes}) == REQUESTS
    # low cardinality: no prompt, execution id or trace id ever becomes a label value
    label_values = {v for rows in found.values() for labels, _ in rows for v in labels.values()}
    assert not any("question" in v for v in label_values)
    assert not {e["metadata"]["execution_id"] for e in envelopes} & label_values
