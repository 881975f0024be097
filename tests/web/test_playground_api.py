"""The playground's own routes, in process: the catalog, runs at a version, errors, auth."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import dspy
import pytest
from _web_helpers import make_settings, models_for, serving
from fastapi import Depends, FastAPI, HTTPException, Request

from llm_server.fastapi import add_playground, install_error_handlers, llm_server_lifespan
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio


class Brief(dspy.Signature):
    """Write a brief."""

    topic: str = dspy.InputField(desc="What it is about")
    words: int = dspy.InputField()
    keywords: list[str] = dspy.InputField()
    brief: str = dspy.OutputField()


class Mood(enum.Enum):
    CALM = "calm"
    URGENT = "urgent"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Memo(dspy.Signature):
    """Write a memo."""

    topic: str = dspy.InputField()
    tone: Literal["plain", "formal"] = dspy.InputField()
    mood: Mood = dspy.InputField()
    level: Level = dspy.InputField()
    audience: Literal["team", "board"] | None = dspy.InputField()
    length: Annotated[Literal[1, 2, 3], "paragraphs"] = dspy.InputField()
    memo: str = dspy.OutputField()


def app_for(
    provider: LocalProvider,
    tmp_path: Path,
    *,
    programs: list[Any] | None = None,
    models: dict[str, Any] | None = None,
    **options: object,
) -> FastAPI:
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=programs or [Brief],
            settings=make_settings(tmp_path),
            config_provider=StaticConfigProvider(models or models_for(provider)),
        )
    )
    install_error_handlers(app)
    add_playground(app, **options)  # type: ignore[arg-type]
    return app


async def test_the_page_and_its_files_are_served_by_the_package(
    provider: LocalProvider, tmp_path: Path
) -> None:
    async with serving(app_for(provider, tmp_path)) as client:
        page = await client.get("/playground")
        assert page.status_code == 200
        assert '<script type="module" src="/playground/static/playground.js">' in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # no CDN, nothing external
        for name, kind in (("playground.js", "javascript"), ("playground.css", "css")):
            asset = await client.get(f"/playground/static/{name}")
            assert asset.status_code == 200
            assert kind in asset.headers["content-type"]
        assert (await client.get("/playground/static/../../etc/passwd")).status_code == 404


async def test_the_catalog_lists_programs_versions_schemas_and_models(
    provider: LocalProvider, tmp_path: Path
) -> None:
    async with serving(app_for(provider, tmp_path)) as client:
        catalog = (await client.get("/playground/api/catalog")).json()
    (program,) = catalog["programs"]
    assert (program["id"], program["version"], program["versions"]) == ("brief", "1.0.0", ["1.0.0"])
    properties = program["schema"]["properties"]
    assert properties["topic"]["type"] == "string"
    assert properties["words"]["type"] == "integer"
    assert properties["keywords"] == {
        "items": {"type": "string"},
        "title": "Keywords",
        "type": "array",
    }
    assert "model_id" not in properties
    assert program["choices"] == {}
    assert program["outputs"] == ["brief"]
    assert {m["id"]: m["breaker"] for m in catalog["models"]} == {
        "gpt-4o-mini": "closed",
        "gpt-4o": "closed",
    }


async def test_a_run_answers_with_the_envelope_of_the_version_asked_for(
    provider: LocalProvider, tmp_path: Path
) -> None:
    body = {
        "inputs": {"topic": "t", "words": 3, "keywords": ["a", "b"]},
        "model_id": "gpt-4o",
        "version": "1.0.0",
    }
    async with serving(app_for(provider, tmp_path)) as client:
        answer = await client.post("/playground/api/run/brief", json=body)
        assert answer.status_code == 200, answer.text
        envelope = answer.json()
        assert envelope["data"]["brief"].startswith("echo: t")
        assert envelope["metadata"]["program"]["version"] == "1.0.0"
        assert envelope["metadata"]["model"]["id"] == "gpt-4o"
        streamed = await client.post("/playground/api/run/brief", json={**body, "stream": True})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert "event: done" in streamed.text
        bad = await client.post(
            "/playground/api/run/brief", json={**body, "inputs": {"topic": "t", "words": "x"}}
        )
        assert bad.status_code == 422
        assert "words" in bad.json()["error"]["message"]
        missing = await client.post("/playground/api/run/brief", json={**body, "version": "9.0.0"})
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "program_not_found"


async def test_the_hosts_dependencies_guard_every_route(
    provider: LocalProvider, tmp_path: Path
) -> None:
    async def staff_only(request: Request) -> None:
        if request.headers.get("X-Staff") != "yes":
            raise HTTPException(status_code=401, detail="staff only")

    app = app_for(provider, tmp_path, dependencies=[Depends(staff_only)])
    async with serving(app) as client:
        for path in ("/playground", "/playground/api/catalog", "/playground/static/playground.js"):
            assert (await client.get(path)).status_code == 401
        assert (await client.get("/playground", headers={"X-Staff": "yes"})).status_code == 200


async def test_literal_and_enum_inputs_come_with_their_choices(
    provider: LocalProvider, tmp_path: Path
) -> None:
    async with serving(app_for(provider, tmp_path, programs=[Memo])) as client:
        (program,) = (await client.get("/playground/api/catalog")).json()["programs"]
        assert program["choices"] == {
            "tone": ["plain", "formal"],
            "mood": ["calm", "urgent"],
            "level": [1, 2],
            "audience": ["team", "board"],  # optional: the page adds an empty choice
            "length": [1, 2, 3],
        }
        assert program["schema"]["required"] == ["topic", "tone", "mood", "level", "length"]
        inputs = {"topic": "t", "tone": "formal", "mood": "urgent", "level": 2, "length": 3}
        body = {"inputs": inputs, "model_id": "gpt-4o"}
        answer = await client.post("/playground/api/run/memo", json=body)
        assert answer.status_code == 200, answer.text
        prompt = str(provider.requests[-1].messages)
        assert "formal" in prompt
        assert "urgent" in prompt
        wrong = {**body, "inputs": {**inputs, "tone": "loud"}}
        refused = await client.post("/playground/api/run/memo", json=wrong)
        assert refused.status_code == 422
        assert "tone" in refused.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_run_names_the_model_that_answered_after_a_fallback(
    provider: LocalProvider, tmp_path: Path, stream: bool
) -> None:
    models = {
        "primary": {
            "model_name": "openai/gpt-4o-mini",
            "api_base": provider.openai_api_base,
            "fallbacks": ["backup"],
        },
        "backup": {"model_name": "openai/gpt-4o", "api_base": provider.openai_api_base},
    }
    provider.add_fault("unavailable", model="gpt-4o-mini")
    body = {
        "inputs": {"topic": "t", "words": 3, "keywords": ["a"]},
        "model_id": "primary",
        "stream": stream,
    }
    async with serving(app_for(provider, tmp_path, models=models)) as client:
        answer = await client.post("/playground/api/run/brief", json=body)
    assert answer.status_code == 200, answer.text
    if stream:
        done = answer.text.split("event: done\ndata: ", 1)[1].split("\n\n", 1)[0]
        envelope = json.loads(done)
    else:
        envelope = answer.json()
    assert [r.model for r in provider.requests if r.api] == ["gpt-4o-mini", "gpt-4o"]
    assert envelope["metadata"]["model"] == {
        "id": "backup",
        "provider": "openai",
        "base_model": "gpt-4o",
        "requested_id": "primary",
    }
