"""The official OpenAI Python SDK calls programs through add_openai_routes, over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import openai
import pytest
from _web_helpers import Summarize, Tally, make_settings, models_for
from fastapi import Depends, FastAPI

from _uvicorn_thread import uvicorn_thread
from llm_server.core.budgets import Budget
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_openai_routes,
    install_error_handlers,
    llm_server_lifespan,
    tenant_header,
)
from llm_server.testing import LocalProvider, RecordedRequest, StaticConfigProvider


class Brief(dspy.Signature):
    """Draft, then summarize the draft."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()


class TwoStep(dspy.Module):
    """A program with two predictors: every request makes two model calls."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("text -> draft")
        self.finish = dspy.Predict("draft -> summary")

    async def aforward(self, text: str) -> dspy.Prediction:
        drafted = await self.draft.acall(text=text)
        return await self.finish.acall(draft=drafted.draft)


def build(provider: LocalProvider, tmp_path: Path, *, middleware: bool = True) -> FastAPI:
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Summarize, Tally, TwoStep],
            settings=make_settings(tmp_path),
            config_provider=StaticConfigProvider(models_for(provider)),
        )
    )
    install_error_handlers(app)
    if middleware:
        app.add_middleware(RequestContextMiddleware)
    add_openai_routes(
        app,
        programs={"summarize": Summarize, "tally": Tally, "two_step": Brief},
        default_model_id="gpt-4o-mini",
        dependencies=[Depends(tenant_header())],
    )
    return app


@pytest.fixture
def served(provider: LocalProvider, tmp_path: Path) -> Iterator[tuple[FastAPI, str]]:
    app = build(provider, tmp_path)
    with uvicorn_thread(app) as url:
        yield app, url


_OPEN: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _clients_closed() -> Iterator[None]:
    """Each test's SDK clients are closed when it ends: a client left to the garbage collector
    (the SDK's objects hold cycles) warns of its unclosed socket in whichever later test the
    collection happens to run, and fails that one."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(url: str, **options: Any) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **options)
    _OPEN.append(sdk)
    return sdk


def billed_each(provider: LocalProvider) -> list[tuple[RecordedRequest, dict[str, int]]]:
    """What the provider billed for each request it received: each recorded request is sent
    again, unstreamed, and its ``usage`` read (the replies are deterministic)."""
    recorded = list(provider.requests)
    assert recorded, "the provider received nothing"
    found = []
    for request in recorded:
        body = {k: v for k, v in request.body.items() if k not in {"stream", "stream_options"}}
        usage = httpx.post(f"{provider.base_url}{request.path}", json=body).json()["usage"]
        found.append((request, usage))
    return found


def billed(provider: LocalProvider) -> dict[str, int]:
    """What the provider billed for every request it received, summed."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    each = [usage for _, usage in billed_each(provider)]
    return {key: sum(usage[key] for usage in each) for key in keys}


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "ignored"}, {"role": "user", "content": text}]


def test_a_plain_call_answers_the_output_field_with_the_billed_usage(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    raw = client(url).chat.completions.with_raw_response.create(
        model="summarize", messages=ask("The cat sat on the mat.")
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: The cat sat on the mat."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "summarize@1.0.0"
    assert raw.headers["x-program-version"] == "1.0.0"
    assert completion.id == f"chatcmpl-{raw.headers['x-execution-id']}"
    assert completion.usage is not None
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens",
                                                "total_tokens"}) == billed(provider)  # fmt: skip


def test_usage_sums_every_call_of_a_program_with_two_predictors(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    completion = client(url).chat.completions.create(model="two_step", messages=ask("a b c"))
    assert completion.choices[0].message.content == "echo: echo: a b c"
    assert len(provider.requests) == 2
    assert completion.usage is not None
    expected = billed(provider)
    assert completion.usage.prompt_tokens == expected["prompt_tokens"]
    assert completion.usage.completion_tokens == expected["completion_tokens"]
    assert completion.usage.total_tokens == expected["total_tokens"]


def test_several_inputs_take_a_json_object_and_answer_the_outputs_as_json(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    provider.script(reply={"total": "3", "tags": '["x", "y"]', "ok": "true"})
    message = '{"count": 3, "labels": ["x", "y"], "strict": true}'
    completion = client(url).chat.completions.create(model="tally", messages=ask(message))
    assert completion.choices[0].message.content is not None
    assert json.loads(completion.choices[0].message.content) == {
        "total": 3,
        "tags": ["x", "y"],
        "ok": True,
    }


@pytest.mark.parametrize(
    ("model", "message", "param"),
    [
        ("tally", "three, please", "messages"),  # several inputs need a JSON object
        ("tally", '{"count": "3", "labels": [], "strict": true}', "messages"),  # strict types
        ("tally", '{"count": 3, "labels": [], "strict": true, "colour": 1}', "messages"),
        ("summarize", [{"type": "image_url", "image_url": {"url": "x"}}], "messages"),
        # a JSON input nested past LLM_SERVER_MAX_JSON_DEPTH (was 500: json's RecursionError)
        ("tally", '{"labels": ' + "[" * 100_000 + "]" * 100_000 + "}", "messages"),
    ],
)
def test_a_message_the_program_cannot_take_is_refused_with_400(
    served: tuple[FastAPI, str], provider: LocalProvider, model: str, message: Any, param: str
) -> None:
    _, url = served
    with pytest.raises(openai.BadRequestError) as refused:
        client(url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": message}]
        )
    assert refused.value.status_code == 400
    assert refused.value.code == "invalid_message"
    assert refused.value.type == "invalid_request_error"
    assert refused.value.param == param
    assert provider.requests == []


def test_a_conversation_without_a_user_message_is_refused_with_400(
    served: tuple[FastAPI, str],
) -> None:
    _, url = served
    with pytest.raises(openai.BadRequestError) as refused:
        client(url).chat.completions.create(
            model="summarize", messages=[{"role": "system", "content": "hi"}]
        )
    assert refused.value.code == "invalid_message"


def test_an_unknown_program_or_version_is_404_in_openais_format(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    with pytest.raises(openai.NotFoundError) as unknown:
        client(url).chat.completions.create(model="gpt-4o", messages=ask("x"))
    assert unknown.value.status_code == 404
    assert unknown.value.code == "model_not_found"
    assert unknown.value.param == "model"
    assert "summarize" in unknown.value.message  # says what exists
    body = unknown.value.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError) as no_version:
        client(url).chat.completions.create(model="summarize@9.9.9", messages=ask("x"))
    assert no_version.value.code == "program_not_found"
    assert provider.requests == []


def test_a_named_version_runs_that_version_and_says_so(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    app, url = served
    manager = app.state.program_manager
    second = manager.get_program("summarize")
    second.signature = second.signature.with_instructions("SECOND VERSION: be brief.")
    saved = manager.save_program_version("summarize", second)  # now the served version
    sdk = client(url)
    latest = sdk.chat.completions.with_raw_response.create(model="summarize", messages=ask("x"))
    assert latest.headers["x-program-version"] == saved.version != "1.0.0"
    assert "SECOND VERSION" in provider.requests[-1].messages[0]["content"]
    first = sdk.chat.completions.with_raw_response.create(
        model="summarize@1.0.0", messages=ask("x")
    )
    assert first.headers["x-program-version"] == "1.0.0"
    assert first.parse().model == "summarize@1.0.0"
    assert "SECOND VERSION" not in provider.requests[-1].messages[0]["content"]
    listed = {model.id for model in sdk.models.list()}
    assert listed == {
        "summarize",
        "summarize@1.0.0",
        f"summarize@{saved.version}",
        "tally",
        "tally@1.0.0",
        "two_step",
        "two_step@1.0.0",
    }


def test_an_open_breaker_answers_503_with_retry_after(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    app, url = served
    app.state.model_manager.breakers["gpt-4o-mini"].force_open()
    with pytest.raises(openai.InternalServerError) as refused:
        client(url).chat.completions.create(model="summarize", messages=ask("x"))
    assert refused.value.status_code == 503
    assert refused.value.code == "circuit_open"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.InternalServerError) as streamed:
        client(url).chat.completions.create(model="summarize", messages=ask("x"), stream=True)
    assert streamed.value.status_code == 503
    assert provider.requests == []


def test_a_tenant_over_its_budget_is_refused_with_429_and_retry_after(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    app, url = served
    app.state.model_manager.budgets.set_budget("acme", "day", Budget(requests=1))
    acme = client(url, default_headers={"X-Tenant-ID": "acme"})
    acme.chat.completions.create(model="summarize", messages=ask("x"))
    with pytest.raises(openai.RateLimitError) as refused:
        acme.chat.completions.create(model="summarize", messages=ask("x"))
    assert refused.value.code == "budget_exceeded"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    client(url).chat.completions.create(model="summarize", messages=ask("x"))  # no tenant
    assert len(provider.requests) == 2


def test_a_stream_sends_the_pieces_then_usage_then_done(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    text = "one two three four five six seven eight"
    stream = client(url).chat.completions.create(
        model="summarize",
        messages=ask(text),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1  # streamed, not sent whole
    assert "".join(pieces) == f"echo: {text}"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens",
                                                "total_tokens"}) == billed(provider)  # fmt: skip
    assert provider.requests[0].stream  # the model call itself streamed
    assert len({c.id for c in chunks}) == 1


def test_the_stream_ends_with_done_and_carries_no_usage_unless_asked(
    served: tuple[FastAPI, str],
) -> None:
    _, url = served
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={"model": "tally", "stream": True,
              "messages": ask('{"count": 1, "labels": [], "strict": false}')},
    ) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        version = response.headers["x-program-version"]
    assert version == "1.0.0"
    assert lines[-1] == "data: [DONE]"
    assert "usage" not in "".join(lines)


@pytest.mark.anyio
async def test_the_async_sdk_calls_plain_and_streamed(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    plain = await sdk.chat.completions.create(model="two_step", messages=ask("hello there"))
    stream = await sdk.chat.completions.create(
        model="two_step",
        messages=ask("hello there"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == "echo: echo: hello there"
    assert len(provider.requests) == 4
    assert plain.usage is not None
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert plain.usage.total_tokens * 2 == billed(provider)["total_tokens"]
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="nope", messages=ask("x"))
    await sdk.close()


def test_a_provider_failure_after_the_first_piece_ends_the_stream_with_an_error(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    provider.cut_streams_after = 3
    provider.chunk_delay_s = 0.05
    try:
        stream = client(url).chat.completions.create(
            model="summarize", messages=ask("a long text " * 20), stream=True
        )
        received: list[str] = []

        def read() -> None:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError) as failed:
            read()
    finally:
        provider.cut_streams_after = None
        provider.chunk_delay_s = 0.0
    assert "".join(received)  # part of the answer arrived first
    assert "stream" in failed.value.message


def test_without_the_middleware_the_route_sets_the_execution_id_header(
    provider: LocalProvider, tmp_path: Path
) -> None:
    with uvicorn_thread(build(provider, tmp_path, middleware=False)) as url:
        raw = client(url).chat.completions.with_raw_response.create(
            model="summarize", messages=ask("x")
        )
    assert raw.parse().id == f"chatcmpl-{raw.headers['x-execution-id']}"


@pytest.mark.parametrize(
    "case",
    [
        ({"model": "summarize", "messages": []}, {}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}]}, {}, 400, "invalid_request"),
        ({"model": "summarize", "n": 2, "messages": [{"role": "user", "content": "x"}]}, {},
         400, "invalid_request"),
        ({"model": "summarize", "messages": [{"role": "user", "content": "x" * 3000}]}, {},
         413, "payload_too_large"),
        ({"model": "summarize", "messages": [{"role": "user", "content": "x"}]},
         {"X-Tenant-ID": "t" * 200}, 400, "bad_input"),  # the tenant dependency refused it
    ],
)  # fmt: skip
def test_every_refusal_is_openais_error_object(
    provider: LocalProvider, tmp_path: Path, case: tuple[dict[str, Any], dict[str, str], int, str]
) -> None:
    body, headers, status, code = case
    app = build(provider, tmp_path)
    add_openai_routes(
        app,
        programs={"summarize": Summarize},
        default_model_id="gpt-4o-mini",
        prefix="/small",
        max_request_bytes=2048,
        dependencies=[Depends(tenant_header())],
    )
    with uvicorn_thread(app) as url:
        path = "/small" if status == 413 else "/v1"
        response = httpx.post(f"{url}{path}/chat/completions", json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert provider.requests == []


@pytest.mark.anyio
async def test_concurrent_calls_each_get_their_own_answer_and_usage(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    import anyio

    _, url = served
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answers: dict[int, Any] = {}

    async def call(n: int) -> None:
        words = " ".join(["word"] * n)  # prompts of different lengths: different usage
        answers[n] = await sdk.chat.completions.create(
            model="summarize", messages=ask(f"{n} {words}"), stream=n % 2 == 0,
            **({"stream_options": {"include_usage": True}} if n % 2 == 0 else {}),
        )  # fmt: skip
        if n % 2 == 0:
            chunks = [chunk async for chunk in answers[n]]
            answers[n] = (
                "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                chunks[-1].usage,
            )
        else:
            answers[n] = (answers[n].choices[0].message.content, answers[n].usage)

    async with anyio.create_task_group() as group:
        for n in range(1, 21):
            group.start_soon(call, n)
    await sdk.close()
    for n, (text, _) in answers.items():
        assert text == "echo: " + f"{n} " + " ".join(["word"] * n)
    assert len(provider.requests) == 20
    for request, own in billed_each(provider):  # each call's usage: its own request's bill
        found = re.search(r"## text ## \]\]\n(\d+) ", request.messages[-1]["content"])
        assert found is not None
        usage = answers[int(found[1])][1]
        assert (usage.prompt_tokens, usage.total_tokens) == (
            own["prompt_tokens"],
            own["total_tokens"],
        )
