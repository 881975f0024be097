"""The OpenAPI document tells the truth: every status the program routes answer is listed with
its envelope, the request models refuse what their schema calls invalid, and fuzzing the
routes from their own schema (valid and invalid bodies) never meets an undocumented answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dspy
import httpx
import pydantic
import pytest
import schemathesis
from _web_helpers import Summarize, Tally, make_settings, models_for, serving
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from llm_server.fastapi import (
    ErrorEnvelope,
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio

ERROR_STATUSES = {"400", "404", "413", "422", "429", "500", "502", "503", "504"}


class Address(pydantic.BaseModel):
    street: str
    number: int


class Deliver(dspy.Signature):
    """Plan a delivery."""

    address: Address = dspy.InputField()
    urgent: bool = dspy.InputField()
    plan: str = dspy.OutputField()


def build_app(provider: LocalProvider, tmp_path: Path) -> FastAPI:
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Summarize, Tally, Deliver],
            settings=make_settings(tmp_path),
            config_provider=StaticConfigProvider(models_for(provider)),
        )
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    for program_id, signature in (("summarize", Summarize), ("tally", Tally), ("deliver", Deliver)):
        add_program_endpoint(app, program_id, signature=signature, default_model_id="gpt-4o-mini")
    return app


@pytest.fixture
def app(provider: LocalProvider, tmp_path: Path) -> FastAPI:
    return build_app(provider, tmp_path)


def test_every_status_a_program_route_answers_is_documented_with_the_envelope(
    app: FastAPI,
) -> None:
    document = app.openapi()
    for path in ("/programs/summarize", "/programs/tally", "/programs/deliver"):
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) >= ERROR_STATUSES, path
        for status in ERROR_STATUSES:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (path, status)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": {"street": "a", "number": False}, "urgent": True}, "address.number"),
        ({"address": {"street": "a", "number": "1"}, "urgent": True}, "address.number"),
        ({"address": {"street": 5, "number": 1}, "urgent": True}, "address.street"),
        ({"address": {"street": "a", "number": 1}, "urgent": 1}, "urgent"),
        ({"address": {"street": "a", "number": 1}, "urgent": "yes"}, "urgent"),
    ],
)
@pytest.mark.parametrize("middleware_first", [False, True])
async def test_what_the_schema_calls_invalid_is_refused_at_any_depth(
    app: FastAPI, provider: LocalProvider, body: dict[str, Any], field: str, middleware_first: bool
) -> None:
    async with serving(app) as client:
        if middleware_first:  # the first request registers the route's gate on the app
            await client.post("/programs/deliver", json={"address": {}, "urgent": True})
        response = await client.post("/programs/deliver", json=body)
        valid = await client.post(
            "/programs/deliver", json={"address": {"street": "a", "number": 1}, "urgent": True}
        )
    assert response.status_code == 422, response.text
    envelope = response.json()
    assert envelope["error"]["type"] == "invalid_request"
    assert f"body.{field}" in envelope["error"]["message"]
    assert valid.status_code == 200, valid.text


def fuzz_cases(app: FastAPI, mode: GenerationMode, examples: int) -> list[Any]:
    """Requests generated from the app's own OpenAPI document for every program route."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    cases: list[Any] = []
    for path in ("/programs/summarize", "/programs/tally", "/programs/deliver"):
        strategy = schema[path]["POST"].as_strategy(generation_mode=mode)

        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def collect(case: Any) -> None:
            cases.append(case)

        collect()
    return cases


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
async def test_fuzzing_the_routes_from_their_schema_meets_only_documented_answers(
    app: FastAPI, provider: LocalProvider, mode: GenerationMode
) -> None:
    cases = fuzz_cases(app, mode, examples=25)
    assert len(cases) >= 30
    document = app.openapi()
    statuses: dict[int, int] = {}
    async with serving(app) as client:
        for case in cases:
            kwargs = case.as_transport_kwargs(base_url="http://testserver")
            request = client.build_request(
                kwargs["method"], kwargs["url"], json=kwargs.get("json"),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            if "json" not in kwargs and kwargs.get("data") is not None:
                request = client.build_request(
                    kwargs["method"], kwargs["url"], content=kwargs["data"],
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
            response: httpx.Response = await client.send(request)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if mode is GenerationMode.POSITIVE:
                # a valid body is served, unless it names a model that is not configured
                named = case.body.get("model_id", "gpt-4o-mini")
                expected = 200 if named in ("gpt-4o-mini", "gpt-4o") else 404
                assert response.status_code == expected, (case.body, response.text)
            documented = document["paths"][case.path]["post"]["responses"]
            assert str(response.status_code) in documented, (case.body, response.text)
            assert response.status_code != 500, (case.body, response.text)
            body = response.json()
            if response.status_code == 200:
                assert body["success"] is True
                assert set(body) == {"success", "data", "metadata"}
            else:
                ErrorEnvelope.model_validate(body)
    if mode is GenerationMode.POSITIVE:
        assert statuses.get(200, 0) >= 10, statuses
    else:
        assert set(statuses) <= {400, 404, 413, 422}, statuses  # invalid bodies: refused
