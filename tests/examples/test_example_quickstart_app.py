"""The quickstart app: the signature's fields in OpenAPI, the envelope from POST."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _example_helpers import load_example, serving

from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


async def test_openapi_shows_the_signature_and_post_returns_the_envelope(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("quickstart_app", tmp_path, monkeypatch, provider.base_url)
    async with serving(example.app) as client:
        schema = (await client.get("/openapi.json")).json()
        ready = await client.get("/health/ready")
        response = await client.post("/programs/summarize", json={"text": "DSPy, served."})
        programs = (await client.get("/programs")).json()
    request = schema["components"]["schemas"]["SummarizeRequest"]["properties"]
    assert request["text"]["description"] == "The text to summarize"
    assert "model_id" in request
    data = schema["components"]["schemas"]["SummarizeData"]["properties"]
    assert data["summary"]["description"] == "A one-sentence summary"
    assert ready.status_code == 200
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"] == {"summary": "echo: DSPy, served."}
    assert body["metadata"]["program"] == {
        "id": "summarize",
        "version": "1.0.0",
        "name": "Summarizer",
    }
    assert body["metadata"]["model"]["id"] == "gpt-4o-mini"
    assert body["metadata"]["performance"]["tokens"]["input"] > 0
    assert body["metadata"]["execution_id"] == response.headers["x-execution-id"]
    assert programs["programs"][0]["versions"] == ["1.0.0"]


async def test_the_quickstart_answers_errors_with_envelopes(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("quickstart_app", tmp_path, monkeypatch, provider.base_url)
    async with serving(example.app) as client:
        missing = await client.post("/programs/summarize", json={})
        unknown = await client.post("/programs/summarize", json={"text": "x", "model_id": "nope"})
    assert (missing.status_code, missing.json()["error"]["type"]) == (422, "invalid_request")
    assert (unknown.status_code, unknown.json()["error"]["type"]) == (404, "model_not_found")
