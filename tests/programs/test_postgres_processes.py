"""Two app processes on one PostgreSQL: a version saved and promoted elsewhere (a "notebook":
this test process) is served by both within 2 s; a rollback likewise. Real uvicorn processes,
the local provider, a private PostgreSQL; bounded, and ends only what it started."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dspy
import httpx
import pytest
from _pg_programs import StandIn

from _app_processes import copy_example, serving_app, the_apps_module
from llm_server.models.program_manager import ProgramManager
from llm_server.postgres import PostgresStorageAdapter
from llm_server.testing import LocalProvider

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def served(url: str) -> str:
    body = httpx.post(f"{url}/programs/summarize", json={"text": "hi"}, timeout=30).json()
    return str(body["metadata"]["program"]["version"])


def test_two_replicas_serve_a_promotion_and_a_rollback_within_two_seconds(
    tmp_path: Path, private_postgres: str, pg_schema: str
) -> None:
    copy_example("fleet_app", tmp_path)
    with LocalProvider() as provider:
        env = {
            "LLM_SERVER_PROGRAM_STORE": private_postgres,
            "LLM_SERVER_PROGRAM_STORE_SCHEMA": pg_schema,
            "LLM_SERVER_PROVIDER_URL": provider.base_url,
            "OTEL_ENABLED": "false",
        }
        with serving_app(tmp_path, env=env) as one, serving_app(tmp_path, env=env) as two:
            assert served(one) == served(two) == "1.0.0"
            module = the_apps_module(tmp_path)
            store = PostgresStorageAdapter(private_postgres, schema=pg_schema)
            try:
                notebook = ProgramManager(model_manager=StandIn(), storage_adapter=store)
                notebook.register_program(module.Summarize, name="Summarizer")
                tuned = dspy.Predict(module.Summarize)
                tuned.demos = [dspy.Example(text="a", summary="b").with_inputs("text")]
                saved = notebook.save_program_version("summarize", tuned, optimizer="manual")
                assert served(one) == "1.0.0"  # saved is not served
                for action, expected in (
                    (
                        lambda: notebook.promote("summarize", saved.version, actor="ana"),
                        saved.version,
                    ),
                    (lambda: notebook.rollback("summarize", actor="ana"), "1.0.0"),
                ):
                    start = time.monotonic()
                    action()
                    while {served(one), served(two)} != {expected}:
                        assert time.monotonic() - start < 2.0, (served(one), served(two))
                        time.sleep(0.05)
            finally:
                store.close()
                sys.modules.pop("main", None)
