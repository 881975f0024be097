"""LocalProvider over real HTTP with plain httpx: answers, usage, records, streaming, lifecycle."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from llm_server.core.errors import ConfigurationError
from llm_server.core.tokens import count_message_tokens, count_text_tokens
from llm_server.testing import LocalProvider, RawReply, RecordedRequest

CHAT_PROMPT = (
    "[[ ## question ## ]]\nWhat is 2+2?\n\n"
    "Respond with the corresponding output fields, starting with the field `[[ ## answer ## ]]`, "
    "and then ending with the marker for `[[ ## completed ## ]]`."
)


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as running:
        yield running


def openai_body(content: Any, *, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def chat(provider: LocalProvider, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{provider.openai_api_base}/chat/completions", json=body, timeout=5)


def test_addresses_follow_the_bound_port(provider: LocalProvider) -> None:
    assert provider.base_url == f"http://127.0.0.1:{provider.port}"
    assert provider.openai_api_base == provider.base_url + "/v1"
    assert provider.anthropic_api_base == provider.base_url + "/v1"


def test_plain_message_gets_an_echo_with_exact_usage(provider: LocalProvider) -> None:
    body = openai_body("hello   there\nfriend")
    data = chat(provider, body).json()
    text = data["choices"][0]["message"]["content"]
    assert text == "echo: hello there friend"
    assert data["usage"] == {
        "prompt_tokens": count_message_tokens(body["messages"], "gpt-4o-mini"),
        "completion_tokens": count_text_tokens(text, "gpt-4o-mini"),
        "total_tokens": data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"],
    }


def test_chat_adapter_prompt_gets_its_fields_and_completed_marker(provider: LocalProvider) -> None:
    text = chat(provider, openai_body(CHAT_PROMPT)).json()["choices"][0]["message"]["content"]
    assert text == "[[ ## answer ## ]]\necho: What is 2+2?\n\n[[ ## completed ## ]]"


def test_usage_can_be_omitted_entirely() -> None:
    with LocalProvider(usage=False) as provider:
        data = chat(provider, openai_body("hi")).json()
    assert "usage" not in data


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("forty-two", "[[ ## answer ## ]]\nforty-two\n\n[[ ## completed ## ]]"),
        ({"answer": 4}, "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"),
        (RawReply("no markers at all"), "no markers at all"),
        (
            lambda request: request.model.upper(),
            "[[ ## answer ## ]]\nGPT-X\n\n[[ ## completed ## ]]",
        ),
    ],
    ids=["string", "mapping", "raw", "callable"],
)
def test_scripted_replies(provider: LocalProvider, reply: Any, expected: str) -> None:
    provider.script(model="openai/gpt-x", reply=reply)
    scripted = chat(provider, openai_body(CHAT_PROMPT, model="gpt-x"))
    other = chat(provider, openai_body(CHAT_PROMPT, model="gpt-y"))
    assert scripted.json()["choices"][0]["message"]["content"] == expected
    assert "echo: What is 2+2?" in other.json()["choices"][0]["message"]["content"]


def test_default_script_applies_to_every_model_and_can_be_removed(provider: LocalProvider) -> None:
    provider.script(reply="fixed")
    assert chat(provider, openai_body("a")).json()["choices"][0]["message"]["content"] == "fixed"
    provider.script(reply=None)
    assert chat(provider, openai_body("a")).json()["choices"][0]["message"]["content"] == "echo: a"


@pytest.mark.anyio
async def test_async_reply_callable(provider: LocalProvider) -> None:
    async def reply(request: RecordedRequest) -> str:
        await anyio.lowlevel.checkpoint()
        return f"call {request.index}"

    provider.script(reply=reply)
    async with httpx.AsyncClient(base_url=provider.openai_api_base) as client:
        response = await client.post("/chat/completions", json=openai_body("x"))
    assert response.json()["choices"][0]["message"]["content"] == "call 1"


def test_failing_reply_callable_is_a_visible_500(provider: LocalProvider) -> None:
    def reply(request: RecordedRequest) -> str:
        raise KeyError("boom")

    provider.script(reply=reply)
    response = chat(provider, openai_body("x"))
    assert response.status_code == 500
    assert "boom" in response.json()["error"]["message"]


def test_requests_are_recorded_with_headers_body_and_images(provider: LocalProvider) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = openai_body([{"type": "text", "text": "What is this?"}, image])
    before = time.time()
    httpx.post(
        f"{provider.openai_api_base}/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-test"},
    )
    [record] = provider.requests
    assert (record.index, record.method, record.path) == (1, "POST", "/v1/chat/completions")
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.body == body
    assert record.model == "gpt-4o-mini"
    assert record.api == "openai"
    assert record.images == [image]
    assert before <= record.timestamp <= time.time()
    with pytest.raises(TypeError):
        record.headers["x"] = "y"  # type: ignore[index]
    provider.clear()
    assert provider.requests == []


def test_anthropic_messages_json(provider: LocalProvider) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    body = {
        "model": "claude-3-5-haiku",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}],
    }
    response = httpx.post(f"{provider.base_url}/v1/messages", json=body)
    data = response.json()
    assert data["type"] == "message"
    assert data["content"] == [{"type": "text", "text": "echo: hi"}]
    counted = [{"role": "system", "content": "Be brief."}, *body["messages"]]
    assert data["usage"] == {
        "input_tokens": count_message_tokens(counted, "claude-3-5-haiku"),
        "output_tokens": count_text_tokens("echo: hi", "claude-3-5-haiku"),
    }
    assert provider.requests[0].images == [image]


@pytest.mark.parametrize("path", ["/messages", "/v1/messages", "/v1/v1/messages"])
def test_anthropic_route_answers_every_api_base_convention(
    provider: LocalProvider, path: str
) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(provider.base_url + path, json=body).status_code == 200


def test_models_health_and_unknown_routes(provider: LocalProvider) -> None:
    provider.script(model="gpt-x", reply="x")
    models = httpx.get(f"{provider.openai_api_base}/models").json()
    assert [m["id"] for m in models["data"]] == ["gpt-x"]
    assert httpx.get(f"{provider.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{provider.base_url}/nope").status_code == 404
    assert chat(provider, {"model": "m"}).status_code == 400  # no messages


def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    events: list[tuple[str | None, str]] = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines.get("event"), lines["data"]))
    return events


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_stream(provider: LocalProvider, include_usage: bool) -> None:
    provider.script(reply="one two three four five six seven")
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    response = chat(provider, openai_body("x", stream=True, **options))
    assert response.headers["content-type"] == "text/event-stream"
    events = [data for _, data in sse_events(response)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three four five six seven"
    assert len([c for c in chunks if c["choices"]]) > 3  # really streamed in pieces
    usage = [c["usage"] for c in chunks if "usage" in c]
    assert len(usage) == int(include_usage)


def test_openai_stream_of_a_refusal(provider: LocalProvider) -> None:
    # As OpenAI streams one: delta.refusal, no content, finish_reason "stop", usage last.
    provider.script(reply=RawReply(None, refusal="I can't help with that."))
    body = openai_body("x", stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(data) for _, data in sse_events(chat(provider, body))[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("refusal") or "" for d in deltas) == "I can't help with that."
    assert not "".join(d.get("content") or "" for d in deltas)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finishes if f] == ["stop"]
    assert chunks[-1]["usage"]["completion_tokens"] == provider.billed_tokens[1] > 0


def test_anthropic_stream(provider: LocalProvider) -> None:
    body = {
        "model": "c",
        "max_tokens": 9,
        "stream": True,
        "messages": [{"role": "user", "content": "a b c d e f"}],
    }
    response = httpx.post(f"{provider.anthropic_api_base}/messages", json=body)
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [
        json.loads(data)["delta"]["text"] for name, data in events if name == "content_block_delta"
    ]
    assert "".join(deltas) == "echo: a b c d e f"
    assert json.loads(events[-2][1])["usage"]["output_tokens"] == count_text_tokens(
        "echo: a b c d e f", "c"
    )


def test_keep_alive_reuses_one_connection(provider: LocalProvider) -> None:
    with httpx.Client(base_url=provider.openai_api_base) as client:
        ports = set()
        for _ in range(5):
            response = client.post("/chat/completions", json=openai_body("x"), extensions={})
            assert response.status_code == 200
            stream = response.extensions["network_stream"]
            ports.add(stream.get_extra_info("socket").getsockname()[1])
    assert len(ports) == 1


def test_start_stop_are_fast_idempotent_and_restartable() -> None:
    provider = LocalProvider()
    with pytest.raises(ConfigurationError):
        _ = provider.port
    started = time.perf_counter()
    provider.start()
    provider.start()
    assert time.perf_counter() - started < 0.5
    assert chat(provider, openai_body("x")).status_code == 200
    provider.stop()
    provider.stop()
    assert not provider.running
    provider.start()
    try:
        assert chat(provider, openai_body("x")).json()["id"] == "chatcmpl-local-2"
    finally:
        provider.stop()


@pytest.mark.anyio
async def test_async_context_manager() -> None:
    async with LocalProvider() as provider, httpx.AsyncClient() as client:
        response = await client.post(
            f"{provider.openai_api_base}/chat/completions", json=openai_body("async")
        )
    assert response.json()["choices"][0]["message"]["content"] == "echo: async"
    assert not provider.running


@pytest.mark.anyio
async def test_hundred_concurrent_callers_each_get_their_own_echo(provider: LocalProvider) -> None:
    provider.latency_s = 0.01  # keep all requests in flight together
    results: dict[int, str] = {}

    async def ask(client: httpx.AsyncClient, n: int) -> None:
        response = await client.post("/chat/completions", json=openai_body(f"caller {n}"))
        results[n] = response.json()["choices"][0]["message"]["content"]

    limits = httpx.Limits(max_connections=100)
    async with (
        httpx.AsyncClient(base_url=provider.openai_api_base, limits=limits) as client,
        anyio.create_task_group() as group,
    ):
        for n in range(100):
            group.start_soon(ask, client, n)
    assert results == {n: f"echo: caller {n}" for n in range(100)}
    assert len(provider.requests) == 100


def test_a_taken_port_is_a_configuration_error(provider: LocalProvider) -> None:
    with pytest.raises(ConfigurationError, match="could not listen"):
        LocalProvider(port=provider.port).start()
