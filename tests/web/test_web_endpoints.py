"""add_program_endpoint: typed by the signature, run through the pipeline, full envelope."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
import pytest
from _web_helpers import PLANTED_KEY, MakeApp, Summarize, make_settings, models_for, serving
from fastapi import FastAPI
from starlette.routing import BaseRoute, Match

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry import RequestObserver, StepTiming, observing
from llm_server.core.tokens import count_message_tokens
from llm_server.fastapi import add_program_endpoint, signature_models
from llm_server.testing import LocalProvider, RecordedRequest, StaticConfigProvider

pytestmark = pytest.mark.anyio


async def test_openapi_shows_the_signature_fields(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    request = components["SummarizeRequest"]
    assert set(request["properties"]) == {"text", "model_id"}
    assert request["required"] == ["text"]
    assert request["properties"]["text"]["description"] == "The text to summarize"
    assert request["properties"]["model_id"]["default"] == "gpt-4o-mini"
    assert request["additionalProperties"] is False
    data = components["SummarizeData"]
    assert data["properties"]["summary"]["description"] == "A one-sentence summary"
    tally = components["TallyRequest"]["properties"]
    assert tally["count"]["type"] == "integer"
    assert tally["labels"] == {"type": "array", "items": {"type": "string"}, "title": "Labels"}
    assert tally["strict"]["type"] == "boolean"
    assert "note" not in components["TallyRequest"]["required"]
    post = schema["paths"]["/programs/summarize"]["post"]
    assert post["description"] == "Summarize the text in one sentence."
    error_ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for status in ("404", "422", "429", "502", "503", "504"):
        assert post["responses"][status]["content"]["application/json"]["schema"] == error_ref


def _chat_requests(provider: LocalProvider) -> list[RecordedRequest]:
    return [r for r in provider.requests if r.api == "openai"]


async def test_a_registered_program_answers_with_the_full_envelope(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    async with serving(make_app()) as client:
        response = await client.post("/programs/summarize", json={"text": "DSPy is neat"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"] == {"summary": "echo: DSPy is neat"}
    metadata = body["metadata"]
    assert metadata["program"] == {"id": "summarize", "version": "1.0.0", "name": "Summarizer"}
    assert metadata["model"] == {
        "id": "gpt-4o-mini",
        "provider": "openai",
        "base_model": "gpt-4o-mini",
    }
    assert metadata["execution_id"] == response.headers["x-execution-id"]
    assert metadata["timestamp"].endswith("Z")
    [sent] = _chat_requests(provider)
    tokens = metadata["performance"]["tokens"]
    assert tokens["input"] == count_message_tokens(sent.messages, "gpt-4o-mini")
    assert tokens["output"] > 0
    assert tokens["total"] == tokens["input"] + tokens["output"]
    assert tokens["method"] == "dspy_history_exact"
    expected_cost = (tokens["input"] * 0.15 + tokens["output"] * 0.60) / 1e6
    assert tokens["cost_usd"] == pytest.approx(expected_cost)
    timing = metadata["performance"]["timing"]
    assert 0 < timing["model_complete_ms"] <= timing["pipeline_complete_ms"] <= timing["total_ms"]
    # DSPy's native engine: the call's wait for a free connection (none: an idle pool)
    assert 0 <= timing["connection_wait_ms"] < timing["model_complete_ms"]
    assert PLANTED_KEY not in response.text


async def test_typed_fields_round_trip(make_app: MakeApp, provider: LocalProvider) -> None:
    provider.script(reply={"total": 7, "tags": ["a", "b"], "ok": True})
    payload = {"count": 3, "labels": ["x", "y"], "strict": False, "model_id": "gpt-4o"}
    async with serving(make_app()) as client:
        response = await client.post("/programs/tally", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"total": 7, "tags": ["a", "b"], "ok": True}
    assert response.json()["metadata"]["model"]["id"] == "gpt-4o"
    [sent] = _chat_requests(provider)
    assert sent.model == "gpt-4o"
    prompt = sent.messages[-1]["content"]
    assert "[[ ## count ## ]]\n3" in prompt
    assert '[[ ## labels ## ]]\n["x", "y"]' in prompt
    assert "[[ ## strict ## ]]\nFalse" in prompt


@pytest.mark.parametrize(
    "payload",
    [
        {"count": "three", "labels": [], "strict": True},
        {"count": 1, "labels": "x", "strict": True},
        {"count": 1, "labels": [], "strict": "maybe"},
        {"count": 1, "labels": []},
    ],
)
async def test_wrong_types_are_422_envelopes(
    make_app: MakeApp, provider: LocalProvider, payload: dict[str, Any]
) -> None:
    async with serving(make_app()) as client:
        response = await client.post("/programs/tally", json=payload)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert provider.requests == []


async def test_the_backend_is_built_once_per_served_version_and_model(make_app: MakeApp) -> None:
    app = make_app()
    async with serving(app) as client:
        manager = app.state.program_manager
        built: list[tuple[str, str, str | None]] = []
        reliable_backend = manager.reliable_backend

        def counting(program_id: str, model_id: str, *, version: str | None = None) -> Any:
            built.append((program_id, model_id, version))
            return reliable_backend(program_id, model_id, version=version)

        manager.reliable_backend = counting
        for _ in range(3):
            assert (await client.post("/programs/summarize", json={"text": "a"})).status_code == 200
        await client.post("/programs/summarize", json={"text": "a", "model_id": "gpt-4o"})
        assert built == [("summarize", "gpt-4o-mini", "1.0.0"), ("summarize", "gpt-4o", "1.0.0")]

        tuned = dspy.Predict(Summarize.with_instructions("Answer in five words."))
        saved = await manager.asave_program_version("summarize", tuned, optimizer="manual")
        response = await client.post("/programs/summarize", json={"text": "a"})
    assert built[-1] == ("summarize", "gpt-4o-mini", saved.version)
    assert response.json()["metadata"]["program"]["version"] == saved.version


def primary_with_backup(provider: LocalProvider) -> dict[str, Any]:
    """Two models on the provider: 'primary' (gpt-4o-mini) falls back to 'backup' (gpt-4o)."""
    return {
        "primary": {
            "model_name": "openai/gpt-4o-mini",
            "api_base": provider.openai_api_base,
            "fallbacks": ["backup"],
        },
        "backup": {"model_name": "openai/gpt-4o", "api_base": provider.openai_api_base},
    }


async def test_the_envelope_names_the_fallback_that_answered(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    models = primary_with_backup(provider)
    provider.add_fault("unavailable", model="gpt-4o-mini")
    async with serving(make_app(models=models)) as client:
        response = await client.post(
            "/programs/summarize", json={"text": "a", "model_id": "primary"}
        )
    assert response.status_code == 200, response.text
    metadata = response.json()["metadata"]
    assert metadata["model"] == {
        "id": "backup",
        "provider": "openai",
        "base_model": "gpt-4o",
        "requested_id": "primary",
    }
    assert metadata["performance"]["tokens"]["cost_usd"] > 0


class OneStep(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.ChainOfThought(Summarize)

    async def aforward(self, text: str) -> dspy.Prediction:
        return await self.step.acall(text=text)


class TwoSteps(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("text -> summary")
        self.second = dspy.Predict("summary -> title")


def test_the_signature_is_read_from_a_one_predictor_module() -> None:
    app = FastAPI()
    add_program_endpoint(app, "one_step", signature=OneStep, default_model_id="m")
    fields = app.openapi()["components"]["schemas"]["OneStepData"]["properties"]
    assert set(fields) == {"reasoning", "summary"}


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (None, "needs signature="),
        (TwoSteps, "2 predictors"),
        (dspy.Signature("model_id -> answer"), "clashes"),
        (
            dspy.Signature(
                {"q": (Callable[[], int], dspy.InputField()), "a": (str, dspy.OutputField())}
            ),
            "cannot build HTTP models",
        ),
    ],
)
def test_unusable_signatures_fail_when_the_app_is_built(signature: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        add_program_endpoint(FastAPI(), "p", signature=signature, default_model_id="m")


def test_signature_models_can_be_used_alone() -> None:
    request, data = signature_models(Summarize, program_id="my-summary", default_model_id="m")
    assert request.__name__ == "MySummaryRequest"
    assert request(text="hi").model_id == "m"
    assert set(data.model_fields) == {"summary"}


async def test_a_router_endpoint_with_a_manager_built_by_hand(
    provider: LocalProvider, tmp_path: Path
) -> None:
    from fastapi import APIRouter

    from llm_server.defaults import FileSystemStorageAdapter
    from llm_server.fastapi import install_error_handlers
    from llm_server.models.manager import ModelManager
    from llm_server.models.program_manager import ProgramManager

    models = ModelManager(
        config_provider=StaticConfigProvider(models_for(provider)), settings=make_settings(tmp_path)
    )
    programs = ProgramManager(
        model_manager=models, storage_adapter=FileSystemStorageAdapter(base_dir=tmp_path / "p")
    )
    programs.register_program(Summarize, name="Summarizer")
    router = APIRouter(prefix="/v2")
    # no signature=: it is read from the registered class
    add_program_endpoint(router, "summarize", default_model_id="gpt-4o", program_manager=programs)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    try:
        async with serving(app) as client:
            response = await client.post("/v2/programs/summarize", json={"text": "by hand"})
    finally:
        await models.aclose()
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"summary": "echo: by hand"}
    assert response.json()["metadata"]["model"]["id"] == "gpt-4o"


async def test_an_open_breaker_refuses_before_any_pipeline_or_provider_work(
    make_app: MakeApp, provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    steps: list[str] = []

    class Steps(RequestObserver):
        def on_step(self, timing: StepTiming) -> None:
            steps.append(timing.step)

    async with serving(app) as client:
        manager = app.state.model_manager
        manager.breakers["gpt-4o-mini"].force_open()
        with observing(Steps()):
            responses = [
                await client.post("/programs/summarize", json={"text": "a"}) for _ in range(20)
            ]
        snapshot = manager.breakers["gpt-4o-mini"].snapshot()
    assert {r.status_code for r in responses} == {503}
    body = responses[0].json()
    assert body["error"]["type"] == "circuit_open"
    assert int(responses[0].headers["Retry-After"]) >= 1
    assert steps == []  # no pipeline ran
    assert provider.requests == []
    assert snapshot.refused == 20
    assert not [r for r in caplog.records if "request" in r.getMessage()]  # no line per refusal


async def test_a_fallback_with_a_closed_breaker_keeps_the_route_open(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    models = primary_with_backup(provider)
    app = make_app(models=models)
    async with serving(app) as client:
        manager = app.state.model_manager
        manager.breakers["primary"].force_open()
        answered = await client.post(
            "/programs/summarize", json={"text": "a", "model_id": "primary"}
        )
        manager.breakers["backup"].force_open()
        refused = await client.post(
            "/programs/summarize", json={"text": "a", "model_id": "primary"}
        )
    assert answered.status_code == 200, answered.text
    assert answered.json()["metadata"]["model"]["id"] == "backup"
    assert refused.status_code == 503
    assert "'primary'" in refused.json()["error"]["message"]


class _Spy(BaseRoute):
    """A route that matches nothing and records the path of every request routed past it."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        self.seen.append(scope["path"])
        return Match.NONE, {}


async def test_after_the_first_refusal_the_middleware_refuses_before_routing(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    app = make_app()
    async with serving(app) as client:
        app.state.model_manager.breakers["gpt-4o-mini"].force_open()
        first = await client.post("/programs/summarize", json={"text": "a"})
        gates = app.state.llm_server_gates  # registered by the route on its first request
        assert set(gates) == {"/programs/summarize"}
        routed: list[str] = []
        app.router.routes.insert(0, _Spy(routed))  # sees every request FastAPI routes
        second = await client.post(
            "/programs/summarize", json={"text": "a"}, headers={"X-Execution-ID": "refused-1"}
        )
        malformed = await client.post(
            "/programs/summarize",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        unknown = await client.post("/programs/summarize", json={"text": "a", "model_id": "nope"})
        app.state.model_manager.breakers["gpt-4o-mini"].reset()
        served = await client.post("/programs/summarize", json={"text": "again"})
    assert first.status_code == second.status_code == 503
    assert second.json()["execution_id"] == "refused-1"
    assert second.headers["x-execution-id"] == "refused-1"
    assert routed == ["/programs/summarize"] * 3  # malformed, unknown and served: not refused
    assert malformed.status_code in (400, 422)
    assert unknown.status_code == 404
    assert served.status_code == 200, served.text
    assert served.json()["data"]["summary"]


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-8-sig", "a"),
        ("utf-16", "a"),
        ("utf-32", "a"),
        ("utf-8", "\\ud800"),  # a lone surrogate escape, which pydantic-core refuses
        ("utf-8", "\\ude00\\ud83d"),
    ],
)
async def test_the_gate_reads_every_body_json_reads(
    make_app: MakeApp, provider: LocalProvider, encoding: str, text: str
) -> None:
    # The gate parses with pydantic-core first; a body it refuses but json.loads reads (a
    # byte-order mark, UTF-16, UTF-32, a lone surrogate) is still read, and refused before
    # routing: the gate decides what it decided with json.loads alone.
    app = make_app()
    body = ('{"text": "' + text + '", "model_id": "gpt-4o"}').encode(encoding)
    headers = {"content-type": "application/json"}
    async with serving(app) as client:
        app.state.model_manager.breakers["gpt-4o"].force_open()
        first = await client.post("/programs/summarize", json={"text": "a", "model_id": "gpt-4o"})
        routed: list[str] = []
        app.router.routes.insert(0, _Spy(routed))
        refused = await client.post("/programs/summarize", content=body, headers=headers)
    assert first.status_code == refused.status_code == 503, refused.text
    assert "'gpt-4o'" in refused.json()["error"]["message"]  # the body's model, not the default
    assert routed == []  # refused by the middleware's gate
    assert provider.requests == []


async def test_under_a_lower_integer_digit_limit_the_gate_reads_as_json_loads_does(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    # pydantic-core reads integers of up to 4,300 digits whatever the interpreter's limit;
    # under a lower one, json.loads refuses a longer integer, and the gate must not read it.
    app = make_app()
    body = ('{"text": "a", "model_id": "gpt-4o", "n": ' + "1" * 1000 + "}").encode()
    headers = {"content-type": "application/json"}
    limit = sys.get_int_max_str_digits()
    async with serving(app, raise_app_exceptions=False) as client:
        app.state.model_manager.breakers["gpt-4o"].force_open()
        await client.post("/programs/summarize", json={"text": "a", "model_id": "gpt-4o"})
        sys.set_int_max_str_digits(640)
        try:
            answered = await client.post("/programs/summarize", content=body, headers=headers)
        finally:
            sys.set_int_max_str_digits(limit)
    assert answered.status_code in (400, 422), answered.text  # the route's: not readable JSON
    assert provider.requests == []


async def test_without_the_middleware_the_route_still_refuses_before_the_pipeline(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    app = make_app(middleware=False)
    async with serving(app) as client:
        app.state.model_manager.breakers["gpt-4o-mini"].force_open()
        body = {"count": 1, "labels": ["a"], "strict": True}
        responses = [await client.post("/programs/tally", json=body) for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert provider.requests == []
