"""Every error becomes the envelope with the status its class declares, over real HTTP faults."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from _web_helpers import PLANTED_KEY, MakeApp, serving
from fastapi import FastAPI, HTTPException

from llm_server.core.errors import (
    CircuitOpenError,
    DataValidationError,
    LLMServerError,
    PayloadTooLargeError,
    RateLimitedError,
)
from llm_server.fastapi import error_response, install_error_handlers
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio

SUMMARIZE = "/programs/summarize"
BODY = {"text": "the circuit is tested"}


def assert_envelope(response: Any, status: int, error_type: str) -> dict[str, Any]:
    """The response is an error envelope with ``status`` and ``error_type``; returns its body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert body["execution_id"] == response.headers["x-execution-id"]
    assert "Traceback" not in response.text
    return body


async def test_provider_500s_open_the_breaker_then_503_with_retry_after(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    provider.add_fault("server_error")
    app = make_app(breaker_failure_threshold=2, breaker_reset_timeout_s=42)
    async with serving(app) as client:
        for _ in range(2):
            assert_envelope(await client.post(SUMMARIZE, json=BODY), 502, "provider_unavailable")
        sent = len(provider.requests)
        refused = await client.post(SUMMARIZE, json=BODY)
        assert_envelope(refused, 503, "circuit_open")
        assert 40 <= int(refused.headers["retry-after"]) <= 42
        assert len(provider.requests) == sent, "an open breaker must not reach the provider"
        # the other model has its own breaker and still answers
        other = await client.post(SUMMARIZE, json={**BODY, "model_id": "gpt-4o"})
        assert other.status_code == 502  # same faulty provider, but not refused


async def test_rate_limit_is_429_with_the_providers_retry_after(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    provider.add_fault("rate_limit", retry_after_s=7)
    async with serving(make_app()) as client:
        response = await client.post(SUMMARIZE, json=BODY)
    assert_envelope(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "7"


async def test_hanging_provider_hits_the_request_deadline_504(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    provider.add_fault("hang")
    async with serving(make_app(request_deadline_s=0.2)) as client:
        response = await client.post(SUMMARIZE, json=BODY)
    assert_envelope(response, 504, "deadline_exceeded")


async def test_auth_failure_is_502_and_never_leaks_the_key(
    make_app: MakeApp, provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.add_fault("auth", message=f"Incorrect API key provided: {PLANTED_KEY}")
    caplog.set_level(logging.DEBUG)
    async with serving(make_app()) as client:
        response = await client.post(SUMMARIZE, json=BODY)
    assert_envelope(response, 502, "provider_auth")
    assert len(provider.requests) == 1
    assert PLANTED_KEY in str(provider.requests[0].headers.get("authorization"))  # it was sent
    assert PLANTED_KEY not in response.text
    assert PLANTED_KEY[8:] not in response.text
    assert all(PLANTED_KEY not in r.getMessage() for r in caplog.records)


async def test_unknown_model_is_404_listing_the_known_ones(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        response = await client.post(SUMMARIZE, json={**BODY, "model_id": "gpt-9"})
    body = assert_envelope(response, 404, "model_not_found")
    assert "gpt-4o-mini" in body["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "bad_field"),
    [
        ({}, "text"),
        ({"text": 3}, "text"),
        ({"text": "x", "unexpected": 1}, "unexpected"),
    ],
)
async def test_invalid_body_is_a_422_envelope_naming_the_field(
    make_app: MakeApp, provider: LocalProvider, payload: dict[str, Any], bad_field: str
) -> None:
    async with serving(make_app()) as client:
        response = await client.post(SUMMARIZE, json=payload)
    body = assert_envelope(response, 422, "invalid_request")
    assert bad_field in body["error"]["message"]
    assert any(d["loc"][-1] == bad_field for d in body["error"]["details"])
    assert provider.requests == []


async def test_unparseable_json_body_is_a_422_envelope(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        response = await client.post(
            SUMMARIZE, content=b"{not json", headers={"content-type": "application/json"}
        )
    assert_envelope(response, 422, "invalid_request")


async def test_unknown_route_and_method_keep_their_status(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        missing = await client.get("/nope")
        wrong_method = await client.get(SUMMARIZE)
    assert_envelope(missing, 404, "not_found")
    assert_envelope(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"


def _raising_app(exc: BaseException, *, middleware: bool) -> FastAPI:
    from llm_server.fastapi import RequestContextMiddleware

    app = FastAPI()
    install_error_handlers(app)
    if middleware:
        app.add_middleware(RequestContextMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "status", "error_type", "retry_after"),
    [
        (CircuitOpenError("gpt-4o-mini", 2.2), 503, "circuit_open", "3"),
        (RateLimitedError("slow down", retry_after_s=None), 429, "rate_limited", "1"),
        (PayloadTooLargeError("too big"), 413, "payload_too_large", None),
        (LLMServerError("generic"), 500, "internal_error", None),
        (HTTPException(418, "teapot"), 418, "i'm_a_teapot", None),
    ],
)
async def test_each_error_class_maps_to_its_status(
    exc: BaseException, status: int, error_type: str, retry_after: str | None
) -> None:
    async with serving(_raising_app(exc, middleware=True)) as client:
        response = await client.get("/boom")
    assert_envelope(response, status, error_type)
    assert response.headers.get("retry-after") == retry_after


async def test_validation_details_are_passed_on() -> None:
    error = DataValidationError("bad data", errors=[{"loc": ["a"], "msg": "no"}])
    async with serving(_raising_app(error, middleware=True)) as client:
        response = await client.get("/boom")
    body = assert_envelope(response, 422, "validation_failed")
    assert body["error"]["details"] == [{"loc": ["a"], "msg": "no"}]


async def test_unexpected_exception_is_a_500_envelope_logged_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="llm_server")
    app = _raising_app(RuntimeError(f"db password {PLANTED_KEY}"), middleware=True)
    async with serving(app) as client:
        response = await client.get("/boom")
    body = assert_envelope(response, 500, "internal_error")
    assert body["error"]["message"] == "internal server error"
    assert PLANTED_KEY not in response.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged
    assert "Traceback" in logged
    assert PLANTED_KEY not in logged


async def test_without_the_middleware_unexpected_errors_still_get_an_envelope() -> None:
    app = _raising_app(RuntimeError("boom"), middleware=False)
    # Starlette answers through the handler, then re-raises to the server: don't re-raise here.
    async with serving(app, raise_app_exceptions=False) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "type": "internal_error",
        "message": "internal server error",
    }


def test_error_response_redacts_messages_and_details() -> None:
    response = error_response(
        400, "bad_input", f"key {PLANTED_KEY}", details=[{"msg": f"Bearer {PLANTED_KEY}"}]
    )
    assert PLANTED_KEY.encode() not in response.body
    assert b'"success":false' in response.body


def test_error_response_renders_what_json_cannot_as_valid_json() -> None:
    # A billed usage with a NaN (no JSON parser must accept one) or a value JSON has no type
    # for still leaves as a parseable envelope, where JSONResponse would fail the response.
    response = error_response(
        502,
        "provider_error",
        "failed: é",
        usage={"cost_usd": float("nan"), "at": Path("/x"), "calls": (1, 2), 3: True},
    )
    body = json.loads(response.body)
    assert body["usage"] == {"cost_usd": None, "at": "/x", "calls": [1, 2], "3": True}
    assert "é".encode() in response.body  # UTF-8, not \u escapes, as JSONResponse writes it
    assert b" " not in response.body.replace(b"failed: ", b"")  # compact
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)


def test_error_response_redacts_every_string_at_any_depth() -> None:
    # Before, only a detail's top-level strings were redacted: a nested one, or an object
    # whose str() quotes a key, would have reached the client.
    @dataclasses.dataclass
    class Cause:
        secret: str

    response = error_response(
        502,
        "provider_error",
        "failed",
        details=[
            {"ctx": {"said": f"bad key {PLANTED_KEY}"}, "chain": [[f"Bearer {PLANTED_KEY}"]]},
            {"cause": RuntimeError(f"provider said: {PLANTED_KEY}"), "obj": Cause(PLANTED_KEY)},
        ],
        usage={"note": {"quoted": PLANTED_KEY}},
    )
    assert PLANTED_KEY.encode() not in response.body
    body = json.loads(response.body)
    assert body["error"]["details"][0]["ctx"]["said"].startswith("bad key ")
    assert body["error"]["details"][1]["cause"].startswith("provider said: ")
