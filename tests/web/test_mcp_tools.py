"""MCP clients from the official SDK call programs as tools (add_mcp_tools), over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx2
import pytest
from _web_helpers import Summarize, Tally, make_settings, models_for
from fastapi import Depends, FastAPI, Header, HTTPException
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

from _uvicorn_thread import uvicorn_thread
from llm_server.core.budgets import Budget
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_mcp_tools,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
    signature_models,
    tenant_header,
)
from llm_server.testing import LocalProvider, RawReply, StaticConfigProvider

pytestmark = pytest.mark.anyio

TOKEN = "let-me-in"


async def authorized(authorization: str = Header(default="")) -> None:
    """A host's own authentication dependency."""
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "no entry")


def build(provider: LocalProvider, tmp_path: Path) -> FastAPI:
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Summarize, Tally],
            settings=make_settings(tmp_path),
            config_provider=StaticConfigProvider(models_for(provider)),
        )
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
    add_mcp_tools(
        app,
        programs={"summarize": Summarize, "tally": Tally},
        default_model_id="gpt-4o-mini",
        dependencies=[Depends(authorized), Depends(tenant_header())],
    )
    return app


@pytest.fixture
def served(provider: LocalProvider, tmp_path: Path) -> Iterator[tuple[FastAPI, str]]:
    app = build(provider, tmp_path)
    with uvicorn_thread(app) as url:
        yield app, f"{url}/mcp"


def http(**headers: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}", **headers})


async def test_a_session_lists_the_tools_with_the_program_routes_schemas(
    served: tuple[FastAPI, str],
) -> None:
    _, url = served
    async with (
        http() as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"summarize", "tally"}
    for name, signature in (("summarize", Summarize), ("tally", Tally)):
        request_model, data_model = signature_models(
            signature, program_id=name, default_model_id="gpt-4o-mini"
        )
        assert tools[name].input_schema == request_model.model_json_schema()
        assert tools[name].output_schema == data_model.model_json_schema()
    assert tools["tally"].input_schema["required"] == ["count", "labels", "strict"]
    assert tools["summarize"].description == Summarize.__doc__


async def test_two_programs_answer_structured_results(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    provider.script(reply={"total": "3", "tags": '["x", "y"]', "ok": "true"}, model="gpt-4o")
    async with http() as client, Client(streamable_http_client(url, http_client=client)) as mcp:
        summary = await mcp.call_tool("summarize", {"text": "The cat sat on the mat."})
        tally = await mcp.call_tool(
            "tally",
            {"count": 3, "labels": ["x", "y"], "strict": True, "note": "n", "model_id": "gpt-4o"},
        )
    assert not summary.is_error
    assert summary.structured_content == {"summary": "echo: The cat sat on the mat."}
    assert summary.meta is not None
    assert summary.meta["llm-server/program_version"] == "1.0.0"
    assert len(summary.meta["llm-server/execution_id"]) >= 8
    assert not tally.is_error
    assert tally.structured_content == {"total": 3, "tags": ["x", "y"], "ok": True}
    assert [r.model for r in provider.requests] == ["gpt-4o-mini", "gpt-4o"]
    assert "count" in provider.requests[1].messages[-1]["content"]


async def test_a_failing_provider_is_a_tool_error(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    provider.add_fault(500, message="the provider is down")
    async with http() as client, Client(streamable_http_client(url, http_client=client)) as mcp:
        failed = await mcp.call_tool("summarize", {"text": "x"})
    assert failed.is_error
    assert failed.structured_content is None
    text = failed.content[0].text  # type: ignore[union-attr]
    assert text.startswith("provider_unavailable:"), text
    assert "the provider is down" in text
    assert len(provider.requests) == 1  # one attempt (retry_max_attempts=1)


async def test_bad_arguments_and_an_open_breaker_are_tool_errors(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    app, url = served
    async with http() as client, Client(streamable_http_client(url, http_client=client)) as mcp:
        wrong = await mcp.call_tool("tally", {"count": "3", "labels": [], "strict": True})
        unknown = await mcp.call_tool("nope", {})
        app.state.model_manager.breakers["gpt-4o-mini"].force_open()
        refused = await mcp.call_tool("summarize", {"text": "x"})
    assert wrong.is_error
    assert "count" in wrong.content[0].text  # type: ignore[union-attr]
    assert unknown.is_error
    assert refused.is_error
    assert refused.content[0].text.startswith("circuit_open:")  # type: ignore[union-attr]
    assert provider.requests == []


async def test_the_hosts_dependencies_guard_the_tools(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    app, url = served
    async with httpx2.AsyncClient() as anonymous:
        response = await anonymous.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    app.state.model_manager.budgets.set_budget("acme", "day", Budget(requests=1))
    results: list[Any] = []
    async with (
        http(**{"X-Tenant-ID": "acme"}) as client,
        Client(streamable_http_client(url, http_client=client)) as mcp,
    ):
        results.append(await mcp.call_tool("summarize", {"text": "x"}))
        results.append(await mcp.call_tool("summarize", {"text": "x"}))
    assert not results[0].is_error
    assert results[1].is_error
    assert results[1].content[0].text.startswith("budget_exceeded:")
    assert len(provider.requests) == 1


async def test_an_unusable_answer_is_a_tool_error_carrying_what_was_billed(
    served: tuple[FastAPI, str], provider: LocalProvider
) -> None:
    _, url = served
    provider.script(reply=RawReply("no field markers at all"))
    async with http() as client, Client(streamable_http_client(url, http_client=client)) as mcp:
        failed = await mcp.call_tool("summarize", {"text": "x"})
        second = await mcp.call_tool("tally", {"count": 1, "labels": [], "strict": True})

    assert failed.is_error
    assert failed.content[0].text.startswith("unparseable_output:")  # type: ignore[union-attr]
    assert failed.meta is not None
    usage = failed.meta["llm-server/usage"]
    assert (usage["input"], usage["output"]) == provider.billed[0]
    assert [c["outcome"] for c in usage["calls"]] == ["unparseable_output"]
    assert second.meta is not None  # unparseable too: its usage is its own call's
    assert second.meta["llm-server/usage"]["input"] == provider.billed[1][0]


async def test_tool_calls_get_a_running_canarys_share_and_are_counted(
    served: tuple[FastAPI, str],
) -> None:
    app, url = served
    pm = app.state.program_manager
    tuned = dspy.Predict(Summarize)
    tuned.demos = [dspy.Example(text="a demo", summary="short").with_inputs("text")]
    canary = str(pm.save_program_version("summarize", tuned, optimizer="manual").version)
    pm.promote("summarize", "1.0.0", actor="test", reason="serve the first version again")
    pm.start_canary("summarize", canary, weight=0.5)  # split per call
    versions = []
    async with http() as client, Client(streamable_http_client(url, http_client=client)) as mcp:
        for _ in range(24):
            result = await mcp.call_tool("summarize", {"text": "x"})
            assert not result.is_error
            assert result.meta is not None
            versions.append(result.meta["llm-server/program_version"])
    assert set(versions) == {"1.0.0", canary}  # each side 1 - 2**-24 likely
    figures = pm.canary_figures("summarize")
    assert figures["canary"]["requests"] == versions.count(canary)
    assert figures["stable"]["requests"] == versions.count("1.0.0")
