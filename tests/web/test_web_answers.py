"""Unusable answers over HTTP: their own error types, the billed usage in the error envelope,
JSON log lines with the execution id, streams, and bodies nested too deep refused at the door."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from _web_helpers import MakeApp, make_settings, serving
from fastapi import Depends, FastAPI

from _uvicorn_thread import uvicorn_thread
from llm_server.core.budgets import Budget
from llm_server.core.telemetry import configure_json_logging
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
    tenant_header,
)
from llm_server.testing import LocalProvider, RawReply, StaticConfigProvider

pytestmark = pytest.mark.anyio

SECRET = "raw-answer-4b1d"


class Rate(dspy.Signature):
    """Rate the text."""

    text: str = dspy.InputField()
    verdict: str = dspy.OutputField()
    confidence: float = dspy.OutputField()


# kind -> (reply, HTTP status, error type)
KINDS: dict[str, tuple[RawReply, int, str]] = {
    "no_markers": (RawReply(f"no markers {SECRET}"), 502, "unparseable_output"),
    "missing_field": (
        RawReply(f"[[ ## verdict ## ]]\n{SECRET}\n\n[[ ## completed ## ]]"),
        502,
        "unparseable_output",
    ),
    "bad_float": (
        RawReply(
            f"[[ ## verdict ## ]]\n{SECRET}\n\n[[ ## confidence ## ]]\nseven\n\n"
            "[[ ## completed ## ]]"
        ),
        502,
        "unparseable_output",
    ),
    "truncated": (
        RawReply(f"[[ ## verdict ## ]]\n{SECRET} and", finish_reason="length"),
        502,
        "output_truncated",
    ),
    "empty": (RawReply(""), 502, "empty_output"),
    "refused": (RawReply(None, refusal="I won't rate that."), 422, "model_refused"),
}


@pytest.fixture
def app_for(provider: LocalProvider, tmp_path: Path) -> Any:
    def build(
        engine: str = "auto", deadline_s: float = 30.0, tenant_required: bool = False, **model: Any
    ) -> FastAPI:
        models = {
            "m": {
                "model_name": "openai/gpt-4o-mini",
                "engine": engine,
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                **model,
            }
        }
        app = FastAPI(
            # budgets apply to X-Tenant-ID's tenant
            dependencies=[Depends(tenant_header(required=tenant_required))],
            lifespan=llm_server_lifespan(
                programs=[Rate],
                settings=make_settings(tmp_path, request_deadline_s=deadline_s),
                config_provider=StaticConfigProvider(models),
            ),
        )
        install_error_handlers(app)
        app.add_middleware(RequestContextMiddleware)
        add_program_endpoint(app, "rate", signature=Rate, default_model_id="m", stream=True)
        return app

    return build


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_json_logging(stream=stream, level=logging.INFO)
    library = logging.getLogger("llm_server")
    try:
        yield stream
    finally:
        library.removeHandler(handler)
        library.propagate = True
        library.setLevel(logging.NOTSET)


def billed(provider: LocalProvider) -> tuple[int, int]:
    return provider.billed_tokens


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ["auto", "litellm"])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_answers_its_type_with_the_billed_usage(
    app_for: Any, provider: LocalProvider, json_logs: io.StringIO, kind: str, engine: str
) -> None:
    reply, status, error_type = KINDS[kind]
    provider.script(reply=reply)
    async with serving(app_for(engine)) as client:
        response = await client.post("/programs/rate", json={"text": "rate me"})

    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == error_type
    assert SECRET not in response.text  # the raw answer is not echoed without the opt-in
    usage = body["usage"]
    assert (usage["input"], usage["output"]) == billed(provider)
    assert usage["method"] == "dspy_history_exact"
    assert usage["cost_usd"] > 0
    assert [(c["model_id"], c["outcome"]) for c in usage["calls"]] == [("m", error_type)]
    assert usage["answer_attempts"] == {error_type: 1}
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    failed = [line for line in lines if error_type in line["message"]]
    assert failed, lines
    assert all(line["execution_id"] == body["execution_id"] for line in failed)
    assert SECRET not in json_logs.getvalue()


async def test_dspy_truncation_warning_is_a_json_line_of_the_request(
    app_for: Any, provider: LocalProvider, json_logs: io.StringIO
) -> None:
    provider.script(reply=KINDS["truncated"][0])
    async with serving(app_for()) as client:
        response = await client.post("/programs/rate", json={"text": "rate me"})

    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    (warning,) = [line for line in lines if "dspy_warning" in line]
    assert "truncated" in warning["dspy_warning"]
    assert warning["execution_id"] == response.json()["execution_id"]
    assert warning["model_id"] == "m"


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("engine", ["auto", "litellm"])
@pytest.mark.parametrize("kind", ["no_markers", "empty", "refused"])
async def test_a_stream_failing_before_its_first_piece_answers_the_envelope_with_usage(
    app_for: Any, provider: LocalProvider, kind: str, engine: str, adapter: str
) -> None:
    reply, status, error_type = KINDS[kind]
    provider.script(reply=reply)
    async with serving(app_for(engine, adapter=adapter)) as client:
        response = await client.post("/programs/rate/stream", json={"text": "rate me"})

    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == error_type
    assert SECRET not in response.text
    assert (body["usage"]["input"], body["usage"]["output"]) == billed(provider)
    if kind == "refused":  # the model's message to the user, as in an unstreamed call
        assert "I won't rate that." in body["error"]["message"]


async def test_a_stream_cut_at_max_tokens_after_its_first_piece_ends_with_usage(
    app_for: Any, provider: LocalProvider
) -> None:
    provider.script(reply=KINDS["truncated"][0])
    async with serving(app_for()) as client:
        response = await client.post("/programs/rate/stream", json={"text": "rate me"})

    assert response.status_code == 200
    events = response.text.split("\n\n")
    assert events[0].startswith("event: delta")
    (error,) = [e for e in events if e.startswith("event: error")]
    envelope = json.loads(error.partition("data: ")[2])
    assert envelope["error"]["type"] == "stream_interrupted"
    assert "cut at max_tokens=1,024" in envelope["error"]["message"]
    assert (envelope["usage"]["input"], envelope["usage"]["output"]) == billed(provider)


async def test_an_answer_after_a_parse_reask_reports_both_attempts(
    app_for: Any, provider: LocalProvider
) -> None:
    replies = iter([KINDS["missing_field"][0], None])  # None: a valid answer
    provider.script(reply=lambda request: next(replies) or {"confidence": 0.5})
    async with serving(app_for(parse_policy={"reasks": 1})) as client:
        response = await client.post("/programs/rate", json={"text": "rate me"})

    assert response.status_code == 200, response.text
    performance = response.json()["metadata"]["performance"]
    assert performance["answer_attempts"] == {"unparseable_output": 1, "ok": 1}
    tokens = performance["tokens"]
    assert (tokens["input"], tokens["output"]) == billed(provider)
    assert len(provider.requests) == 2


@pytest.mark.parametrize("engine", ["auto", "litellm"])
async def test_a_reask_cut_by_the_deadline_is_charged_to_the_budget_as_the_envelope_reports_it(
    app_for: Any, provider: LocalProvider, engine: str
) -> None:
    asked: dict[str, int] = {}

    async def reply(request: Any) -> Any:
        text = request.messages[-1]["content"]
        asked[text] = asked.get(text, 0) + 1
        if asked[text] == 1:
            return KINDS["missing_field"][0]
        await asyncio.sleep(1.5)  # the re-ask is still in flight at the deadline
        return {"confidence": 0.5}

    provider.script(reply=reply)
    app = app_for(engine, deadline_s=1.0, parse_policy={"reasks": 1})
    async with serving(app) as client:
        app.state.model_manager.budgets.set_budget("acme", "day", Budget(tokens=10**9))
        responses = await asyncio.gather(
            *(
                client.post(
                    "/programs/rate", json={"text": f"rate {i}"}, headers={"X-Tenant-ID": "acme"}
                )
                for i in range(4)
            )
        )
        (used, _) = (await app.state.model_manager.budgets.usage("acme"))["day"]

    for _ in range(50):  # the provider bills the cut calls when they end (bounded: 5 s)
        if len(provider.billed) == 8:
            break
        await asyncio.sleep(0.1)
    assert {r.status_code for r in responses} == {504}
    usages = [r.json()["usage"] for r in responses]
    for usage in usages:
        assert [c["outcome"] for c in usage["calls"]] == ["unparseable_output", "cut"]
    # every prompt sent was billed and is reported (the cut call's answer is unknown)
    assert sum(u["input"] for u in usages) == sum(p for p, _ in provider.billed)
    assert used.tokens == sum(u["total"] for u in usages)  # the budget: what was reported
    assert used.cost_usd == pytest.approx(sum(u["cost_usd"] for u in usages))


@pytest.mark.parametrize("engine", ["auto", "litellm"])
@pytest.mark.parametrize("kind", ["valid", "truncated"])
async def test_a_streamed_request_is_charged_to_its_tenant_as_its_events_report_it(
    app_for: Any, provider: LocalProvider, engine: str, kind: str
) -> None:
    # The tenant comes from an app-wide dependency: the stream route must run it too.
    provider.script(reply={"confidence": 0.5} if kind == "valid" else KINDS[kind][0])
    app = app_for(engine)
    async with serving(app) as client:
        app.state.model_manager.budgets.set_budget("acme", "day", Budget(tokens=10**9))
        response = await client.post(
            "/programs/rate/stream", json={"text": "rate me"}, headers={"X-Tenant-ID": "acme"}
        )
        (used, _) = (await app.state.model_manager.budgets.usage("acme"))["day"]

    assert response.status_code == 200, response.text
    last = [e for e in response.text.split("\n\n") if e.startswith("event:")][-1]
    sent = json.loads(last.partition("data: ")[2])
    tokens = sent["metadata"]["performance"]["tokens"] if kind == "valid" else sent["usage"]
    assert (tokens["input"], tokens["output"]) == billed(provider)
    assert (used.requests, used.tokens) == (1, sum(billed(provider)))  # was (0, 0)


async def test_the_stream_route_runs_the_apps_dependencies_before_any_call(
    app_for: Any, provider: LocalProvider
) -> None:
    async with serving(app_for(tenant_required=True)) as client:
        refused = await client.post("/programs/rate/stream", json={"text": "rate me"})

    assert refused.status_code == 400, refused.text  # was 200: the dependency never ran
    assert "X-Tenant-ID" in refused.json()["error"]["message"]
    assert provider.requests == []


async def test_a_body_nested_too_deep_is_refused_before_parsing_and_the_client_goes_on(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    fine = b'{"text": "x", "labels": ' + b"[" * 10 + b"]" * 10 + b"}"
    async with serving(make_app(), raise_app_exceptions=False) as client:
        refused = await client.post(
            "/programs/summarize", content=deep, headers={"content-type": "application/json"}
        )
        at_limit = await client.post(
            "/programs/summarize",
            content=b'{"text": ' + b"[" * 63 + b"]" * 63 + b"}",  # 64 levels with the object
            headers={"content-type": "application/json"},
        )
        shallow = await client.post(
            "/programs/summarize", content=fine, headers={"content-type": "application/json"}
        )
        served = await client.post("/programs/summarize", json={"text": "still here"})

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["type"] == "bad_input"
    assert "LLM_SERVER_MAX_JSON_DEPTH" in refused.json()["error"]["message"]
    assert at_limit.status_code == 422  # parsed (64 levels are allowed), then not a string
    assert shallow.status_code == 422  # an unknown field, told by the schema
    assert served.status_code == 200
    assert len(provider.requests) == 1


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response (Content-Length framed) from ``sock``: status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(": ") for h in lines[1:])
        if k.lower() == "content-length"
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def test_over_a_real_socket_the_connection_serves_the_next_request_after_a_deep_body(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    fine = b'{"text": "still here"}'

    def post(body: bytes) -> bytes:
        return (
            b"POST /programs/summarize HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    with (
        uvicorn_thread(make_app()) as base,
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock,
    ):
        sock.settimeout(20)
        answers = []
        for body in (deep, deep, fine):  # the route's own gate, then the middleware's
            sock.sendall(post(body))
            answers.append(_read_response(sock))

    assert [status for status, _ in answers] == [400, 400, 200]
    assert json.loads(answers[0][1])["error"]["type"] == "bad_input"
    assert len(provider.requests) == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
async def test_a_deep_body_in_another_json_encoding_is_refused_too(
    make_app: MakeApp, provider: LocalProvider, encoding: str
) -> None:
    # Python's json reads UTF-16 and UTF-32 bodies too; there a backslash is not next to the
    # quote it escapes, so an escaped quote must not be taken for the end of a string.
    deep = "[" * 100_000 + "]" * 100_000
    text = '{"text": "\\"", "labels": ' + deep + ', "note": "\\""}'
    async with serving(make_app(), raise_app_exceptions=False) as client:
        refused = await client.post(
            "/programs/summarize",
            content=text.encode(encoding),
            headers={"content-type": "application/json"},
        )
        served = await client.post("/programs/summarize", json={"text": "still here"})

    assert refused.status_code == 400, refused.text  # was 500: json's RecursionError
    assert "LLM_SERVER_MAX_JSON_DEPTH" in refused.json()["error"]["message"]
    assert served.status_code == 200


async def test_a_shallow_body_with_many_brackets_and_escapes_in_its_strings_is_served(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    text = '[{"a\\": "\\"' * 100 + "x \\ \\\\ } ] end"
    body = json.dumps({"text": text}).encode()
    assert body.count(b"[") + body.count(b"{") > 64  # past the count: the scan decides
    async with serving(make_app(), raise_app_exceptions=False) as client:
        response = await client.post(
            "/programs/summarize", content=body, headers={"content-type": "application/json"}
        )

    assert response.status_code == 200, response.text
    assert text in provider.requests[-1].messages[-1]["content"]


# Every field written, the last one cut: DSPy parses it (confidence reads 0.5 of "0.55").
CUT_BUT_PARSED = RawReply(
    "[[ ## verdict ## ]]\nfair\n\n[[ ## confidence ## ]]\n0.5", finish_reason="length"
)


@pytest.mark.parametrize("engine", ["auto", "litellm"])
async def test_a_cut_answer_that_parses_is_refused_as_truncated_with_its_usage(
    app_for: Any, provider: LocalProvider, engine: str
) -> None:
    provider.script(reply=CUT_BUT_PARSED)
    async with serving(app_for(engine)) as client:
        response = await client.post("/programs/rate", json={"text": "rate me"})
        streamed = await client.post("/programs/rate/stream", json={"text": "rate me"})

    assert response.status_code == 502, response.text  # was 200 with the cut answer
    body = response.json()
    assert body["error"]["type"] == "output_truncated"
    assert "max_tokens=1,024" in body["error"]["message"]
    assert body["usage"]["answer_attempts"] == {"output_truncated": 1}
    assert [c["outcome"] for c in body["usage"]["calls"]] == ["output_truncated"]
    # A stream whose pieces went out ends with an error event instead of the cut answer.
    assert streamed.status_code == 200
    events = streamed.text.split("\n\n")
    (error,) = [e for e in events if e.startswith("event: error")]
    envelope = json.loads(error.partition("data: ")[2])
    assert envelope["error"]["type"] == "stream_interrupted"
    assert "it parsed, but its last output field is incomplete" in envelope["error"]["message"]
    assert not any(e.startswith("event: done") for e in events)
    totals = (
        body["usage"]["input"] + envelope["usage"]["input"],
        body["usage"]["output"] + envelope["usage"]["output"],
    )
    assert totals == billed(provider)


@pytest.mark.parametrize("engine", ["auto", "litellm"])
async def test_a_cut_answer_that_parses_is_asked_again_with_more_tokens_by_the_policy(
    app_for: Any, provider: LocalProvider, engine: str
) -> None:
    replies = iter([CUT_BUT_PARSED, None])  # None: a valid answer
    provider.script(reply=lambda request: next(replies) or {"confidence": 0.55})
    policy = {"truncation_max_tokens": 4096}
    async with serving(app_for(engine, parse_policy=policy)) as client:
        response = await client.post("/programs/rate", json={"text": "rate me"})

    assert response.status_code == 200, response.text
    assert response.json()["data"]["confidence"] == 0.55
    performance = response.json()["metadata"]["performance"]
    assert performance["answer_attempts"] == {"output_truncated": 1, "ok": 1}
    assert (performance["tokens"]["input"], performance["tokens"]["output"]) == billed(provider)
    sent = [
        r.body.get("max_tokens") or r.body.get("max_completion_tokens") for r in provider.requests
    ]
    assert sent == [1024, 2048]
