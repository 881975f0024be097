"""Every ```python block in README.md runs, so the user guide cannot rot.

Each block runs in a fresh interpreter, in a temporary folder holding the example's
``config/model_config.yml`` pointed at a LocalProvider. A block that defines a FastAPI ``app``
with ``POST /predict`` is also driven: its lifespan runs and one request must succeed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_server.testing import LocalProvider

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

DRIVER = """

import asyncio as _asyncio

import httpx as _httpx


async def _drive() -> None:
    async with app.router.lifespan_context(app):
        transport = _httpx.ASGITransport(app=app)
        async with _httpx.AsyncClient(transport=transport, base_url="http://readme") as client:
            response = await client.post("/predict", json={"prompt": "Hello, world!"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    assert body["metadata"]["performance"]["tokens"]["method"] == "dspy_history_exact", body


_asyncio.run(_drive())
"""


CONTINUES = "<!-- continues the block above -->\n"


def python_blocks() -> list[tuple[int, str]]:
    """(line, code) of each block; a block marked as continuing gets the blocks before it."""
    text = README.read_text(encoding="utf-8")
    blocks: list[tuple[int, str]] = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        code = match.group(1)
        if text[: match.start()].endswith(CONTINUES) and blocks:
            code = blocks[-1][1] + "\n" + code
        blocks.append((line, code))
    return blocks


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as running:
        yield running


def test_the_readme_has_code_to_run() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, provider: LocalProvider, tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples" / "reference_app" / "config", tmp_path / "config")
    if "app = FastAPI(" in code and '"/predict"' in code:
        code += DRIVER
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code, encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "LLM_SERVER_", "LLM_CONFIG"))
    }
    env["LLM_SERVER_PROVIDER_URL"] = provider.base_url
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"README.md block at line {line} failed:\n{result.stdout}\n{result.stderr}"
    )
