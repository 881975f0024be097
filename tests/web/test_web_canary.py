"""Canaries through a program endpoint (in-process, file-system storage: process-local)."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import anyio.to_thread
import dspy
import pytest
from _web_helpers import MakeApp, Summarize, serving
from starlette.requests import Request

from llm_server.core.budgets import tenant_scope
from llm_server.fastapi import add_openai_routes, add_playground
from llm_server.fastapi._canary_serving import pick_version
from llm_server.models.canary import CanaryGuard
from llm_server.programs._canary import on_canary
from llm_server.testing import LocalProvider, RawReply, RecordedRequest

pytestmark = pytest.mark.anyio

MARK = "canary-demo-marker"


def _broken_for_the_canary(request: RecordedRequest) -> Any:
    """Unparseable answers to prompts carrying the canary version's demo; echo otherwise."""
    if MARK in json.dumps(request.body):
        return RawReply("I cannot answer in that format.")
    text = request.body["messages"][-1]["content"]
    return {"summary": "ok: " + text[-20:]}


def _save_canary_version(app: Any) -> str:
    """Save a version with a demo (the canary) and serve 1.0.0 again; its version."""
    pm = app.state.program_manager
    tuned = dspy.Predict(Summarize)
    tuned.demos = [dspy.Example(text=MARK, summary="short").with_inputs("text")]
    saved = pm.save_program_version("summarize", tuned, optimizer="manual")
    pm.promote("summarize", "1.0.0", actor="test", reason="serve the first version again")
    return str(saved.version)


async def test_a_sticky_header_keeps_a_caller_on_one_side_and_the_envelope_says_which(
    make_app: MakeApp,
) -> None:
    app = make_app()
    async with serving(app) as client:
        version = _save_canary_version(app)
        pm = app.state.program_manager
        pm.start_canary("summarize", version, weight=0.5, sticky="header:X-Session", actor="ana")
        seen: dict[str, set[tuple[str, bool]]] = {}
        for session in range(40):
            for _ in range(3):
                response = await client.post(
                    "/programs/summarize",
                    json={"text": "hello"},
                    headers={"X-Session": f"s{session}"},
                )
                assert response.status_code == 200, response.text
                block = response.json()["metadata"]["program"]
                seen.setdefault(f"s{session}", set()).add((block["version"], block["canary"]))
        assert all(len(sides) == 1 for sides in seen.values())
        sides = {next(iter(s)) for s in seen.values()}
        assert sides == {("1.0.0", False), (version, True)}
        listed = (await client.get("/programs")).json()["programs"]
        figures = next(p for p in listed if p["id"] == "summarize")["figures"]
        assert figures == pm.canary_figures("summarize")
        assert figures["stable"]["requests"] + figures["canary"]["requests"] == 120
        assert (figures["stable"]["version"], figures["canary"]["version"]) == ("1.0.0", version)
        assert figures["canary"]["latency_ms"]["p95"] > 0
        assert figures["canary"]["tokens_per_request"] > figures["stable"]["tokens_per_request"]
        pm.end_canary("summarize", "rollback", actor="ana", reason="enough")
        block = (await client.post("/programs/summarize", json={"text": "x"})).json()
        assert block["metadata"]["program"] == {
            "id": "summarize",
            "version": "1.0.0",
            "name": "Summarizer",
        }


async def test_an_unparseable_canary_is_rolled_back_by_the_guard_with_the_reason(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    provider.script(reply=_broken_for_the_canary)
    app = make_app()
    ended: list[Any] = []
    async with serving(app) as client:
        version = _save_canary_version(app)
        pm = app.state.program_manager
        pm.on_canary_end(ended.append)
        guard = CanaryGuard(min_requests=10)
        pm.start_canary("summarize", version, weight=0.3, guard=guard, actor="ana")
        start = time.monotonic()
        statuses: set[int] = set()
        while pm.canaries("summarize")[-1].active:
            assert time.monotonic() - start < 30, pm.canary_figures("summarize")
            response = await client.post("/programs/summarize", json={"text": "t"})
            statuses.add(response.status_code)
            await anyio.sleep(0.01)
        assert statuses == {200, 502}
        last = pm.canaries("summarize")[-1]
        assert (last.outcome, last.ended_by) == ("rollback", "canary-guard")
        assert last.end_reason is not None
        assert last.end_reason.startswith("parse failures")
        assert [c.id for c in ended] == [last.id]
        for _ in range(20):  # the stable version serves everyone again
            response = await client.post("/programs/summarize", json={"text": "t"})
            assert response.status_code == 200
            assert response.json()["metadata"]["program"]["version"] == "1.0.0"


async def test_sticky_by_tenant_keeps_each_tenant_on_one_side(make_app: MakeApp) -> None:
    app = make_app()
    async with serving(app) as client:
        version = _save_canary_version(app)
        pm = app.state.program_manager
        pm.start_canary("summarize", version, weight=0.5, sticky="tenant")
        sides: dict[str, set[bool]] = {}
        for tenant in [f"tenant-{i}" for i in range(30)] * 3:
            with tenant_scope(tenant):
                picked = pick_version(pm, "summarize", Request({"type": "http", "headers": []}))
            sides.setdefault(tenant, set()).add(bool(picked.canary))
        assert all(len(side) == 1 for side in sides.values())
        assert {next(iter(side)) for side in sides.values()} == {True, False}
        response = await client.post("/programs/summarize", json={"text": "no tenant"})
        assert "canary" in response.json()["metadata"]["program"]  # placed on its own


async def test_a_request_in_flight_finishes_on_the_version_it_started_on(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    app = make_app()
    async with serving(app) as client:
        version = _save_canary_version(app)
        pm = app.state.program_manager
        canary = pm.start_canary("summarize", version, weight=0.5, sticky="header:X-Session")
        key = next(k for k in (f"s{i}" for i in range(100)) if on_canary(canary, k))
        provider.add_latency(0.8)
        async with anyio.create_task_group() as group:
            answers: list[Any] = []

            async def ask() -> None:
                response = await client.post(
                    "/programs/summarize", json={"text": "slow"}, headers={"X-Session": key}
                )
                answers.append(response.json()["metadata"]["program"])

            group.start_soon(ask)
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(
                lambda: pm.end_canary("summarize", "rollback", reason="mid-request")
            )
        assert answers == [
            {"id": "summarize", "version": version, "name": "Summarizer", "canary": True}
        ]
        provider.clear_faults()
        after = await client.post(
            "/programs/summarize", json={"text": "x"}, headers={"X-Session": key}
        )
        assert after.json()["metadata"]["program"]["version"] == "1.0.0"


async def test_the_playground_catalog_shows_the_served_version_and_the_canary(
    make_app: MakeApp,
) -> None:
    app = make_app()
    add_playground(app)
    async with serving(app) as client:
        version = _save_canary_version(app)
        pm = app.state.program_manager
        pm.start_canary("summarize", version, weight=0.5)
        for _ in range(10):
            await client.post("/programs/summarize", json={"text": "hi"})
        catalog = (await client.get("/playground/api/catalog")).json()
        page = (await client.get("/playground")).text
    figures = next(p for p in catalog["programs"] if p["id"] == "summarize")["figures"]
    assert (figures["stable"]["version"], figures["canary"]["version"]) == ("1.0.0", version)
    assert figures["stable"]["requests"] + figures["canary"]["requests"] == 10
    assert 'id="figures"' in page


async def test_openai_clients_get_the_canarys_share_sticky_and_counted(make_app: MakeApp) -> None:
    app = make_app()
    add_openai_routes(app, programs={"summarize": Summarize}, default_model_id="gpt-4o-mini")
    async with serving(app) as client:
        version = _save_canary_version(app)
        pm = app.state.program_manager
        pm.start_canary("summarize", version, weight=0.5, sticky="header:X-Session")
        seen: dict[str, set[str]] = {}
        for session in range(30):
            for stream in (False, True):
                response = await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "summarize",
                        "messages": [{"role": "user", "content": "hello"}],
                        "stream": stream,
                    },
                    headers={"X-Session": f"s{session}"},
                )
                assert response.status_code == 200, response.text
                seen.setdefault(f"s{session}", set()).add(response.headers["X-Program-Version"])
        assert all(len(versions) == 1 for versions in seen.values())
        assert {next(iter(v)) for v in seen.values()} == {"1.0.0", version}
        figures = pm.canary_figures("summarize")
        assert figures["stable"]["requests"] + figures["canary"]["requests"] == 60
        pinned = await client.post(  # a named version is served as named, not split
            "/v1/chat/completions",
            json={"model": "summarize@1.0.0", "messages": [{"role": "user", "content": "x"}]},
        )
        assert pinned.json()["model"] == "summarize@1.0.0"
        after = pm.canary_figures("summarize")
        assert after["stable"]["requests"] + after["canary"]["requests"] == 60
