"""The reference README's example app, unchanged: envelope, exact tokens, 200 at once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _example_helpers import load_example, serving

from llm_server.core.tokens import count_message_tokens, count_text_tokens
from llm_server.testing import LocalProvider, RawReply, RecordedRequest

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"
PRICE_IN, PRICE_OUT = 0.15, 0.60  # USD per million tokens, LiteLLM's bundled map


def answer_for(n: int) -> str:
    """A different answer (and token count) per prompt number."""
    return f"answer {n}" + " more" * (n % 11)


def reply(record: RecordedRequest) -> RawReply:
    """Answer each prompt in DSPy's chat format with its own text."""
    match = re.search(r"prompt-(\d+)", record.messages[-1]["content"])
    n = int(match.group(1)) if match else -1
    return RawReply(f"[[ ## output ## ]]\n{answer_for(n)}\n\n[[ ## completed ## ]]")


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider(reply=reply) as local:
        yield local


@asynccontextmanager
async def serving_reference(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``serving``, then close the model clients, which the reference lifespan never does."""
    async with serving(app) as client:
        model_manager = app.state.program_manager.model_manager
        yield client
    await model_manager.aclose()  # else its keep-alive sockets leak (ResourceWarning at GC)


def expected_tokens(provider: LocalProvider, n: int) -> tuple[int, int]:
    """Input and output tokens of prompt ``n`` as the provider counted them."""
    [record] = [r for r in provider.requests if f"prompt-{n}\n" in r.messages[-1]["content"]]
    text = reply(record).text
    return count_message_tokens(record.messages, MODEL), count_text_tokens(text, MODEL)


async def test_the_reference_envelope_with_exact_tokens_and_cost(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("reference_app", tmp_path, monkeypatch, provider.base_url)
    async with serving_reference(example.app) as client:
        response = await client.post("/predict", json={"prompt": "prompt-7"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "data", "metadata"}
    assert body["success"] is True
    assert body["data"] == {"response": answer_for(7)}
    metadata = body["metadata"]
    assert set(metadata) == {"program", "model", "performance", "execution_id", "timestamp"}
    assert metadata["program"] == {"id": "predictor", "version": "1.0.0", "name": "Text Completion"}
    assert metadata["model"] == {"id": MODEL, "provider": "openai", "base_model": MODEL}
    performance = metadata["performance"]
    assert set(performance) == {"timing", "tokens", "trace_id"}
    assert re.fullmatch(r"[0-9a-f]{32}", performance["trace_id"])
    timing = performance["timing"]
    assert 0 < timing["model_complete_ms"] <= timing["total_ms"]
    tokens_in, tokens_out = expected_tokens(provider, 7)
    assert performance["tokens"] == {
        "input": tokens_in,
        "output": tokens_out,
        "total": tokens_in + tokens_out,
        "cost_usd": pytest.approx((tokens_in * PRICE_IN + tokens_out * PRICE_OUT) / 1e6),
        "method": "dspy_history_exact",
    }
    assert re.fullmatch(r"[0-9a-f-]{36}", metadata["execution_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", metadata["timestamp"])
    assert (tmp_path / "reference_app" / "dspy_programs" / "predictor" / "1.0.0").is_dir()


async def test_200_concurrent_requests_each_get_their_own_tokens(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("reference_app", tmp_path, monkeypatch, provider.base_url)
    bodies: dict[int, dict[str, object]] = {}
    async with serving_reference(example.app) as client:

        async def one(n: int) -> None:
            prompt = f"prompt-{n}\n" + "word " * (n % 17)  # different lengths, different counts
            response = await client.post("/predict", json={"prompt": prompt})
            assert response.status_code == 200, response.text
            bodies[n] = response.json()

        async with anyio.create_task_group() as group:
            for n in range(1000, 1200):
                group.start_soon(one, n)

    assert len(bodies) == 200
    wrong = []
    for n, body in bodies.items():
        tokens = body["metadata"]["performance"]["tokens"]  # type: ignore[index]
        tokens_in, tokens_out = expected_tokens(provider, n)
        if body["data"] != {"response": answer_for(n)} or (tokens["input"], tokens["output"]) != (
            tokens_in,
            tokens_out,
        ):
            wrong.append(n)
    assert wrong == []
    inputs = {b["metadata"]["performance"]["tokens"]["input"] for b in bodies.values()}  # type: ignore[index]
    assert len(inputs) == 17, "prompt lengths differ, so must the counted input tokens"
    ids = {b["metadata"]["execution_id"] for b in bodies.values()}  # type: ignore[index]
    assert len(ids) == 200


async def test_an_unknown_model_gives_the_reference_apps_own_500(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("reference_app", tmp_path, monkeypatch, provider.base_url)
    async with serving_reference(example.app) as client:
        response = await client.post("/predict", json={"prompt": "hi", "model_id": "gpt-9"})
    # The reference handler turns every error into HTTPException(500, str(e)); it is kept as
    # written, so this is FastAPI's default shape, not the envelope (see the other examples).
    assert response.status_code == 500
    assert "gpt-9" in response.json()["detail"]
