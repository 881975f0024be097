"""Every ```python block in README.md and docs/ runs, so the documentation cannot rot.

Each block runs in a fresh interpreter, in a temporary folder holding the example's
``config/model_config.yml`` pointed at a LocalProvider. A block marked
``<!-- continues the block above -->`` runs with the blocks before it on its page. A block
that defines a FastAPI ``app`` with ``POST /predict`` is also driven: its lifespan runs and one
request must succeed. A ```text block marked ``<!-- output -->`` right after a python block is
its expected standard output (a line may end in ``...`` to match any rest of the line).
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
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

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
OUTPUT = re.compile(r"\n*<!-- output -->\n```text\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[str, int, str, str | None]]:
    """(page, line, code, expected output) of each block of ``page``."""
    text = page.read_text(encoding="utf-8")
    name = str(page.relative_to(REPO))
    blocks: list[tuple[str, int, str, str | None]] = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        code = match.group(1)
        if text[: match.start()].endswith(CONTINUES) and blocks:
            code = blocks[-1][2] + "\n" + code
        output = OUTPUT.match(text, match.end())
        blocks.append((name, line, code, output.group(1) if output else None))
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def matches(expected: str, actual: str) -> bool:
    """Line by line; an expected line ending in ``...`` matches any line with that start."""
    want, got = expected.strip().splitlines(), actual.strip().splitlines()
    return len(want) == len(got) and all(
        g.startswith(w[:-3]) if w.endswith("...") else g == w
        for w, g in zip(want, got, strict=True)
    )


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as running:
        yield running


def test_the_docs_have_code_to_run() -> None:
    assert len(BLOCKS) >= 30
    assert sum(1 for *_, output in BLOCKS if output is not None) >= 2


def test_output_matching() -> None:
    assert matches("1.1.0 2\n", "1.1.0 2")
    assert matches("id ...", "id 4f1c")
    assert not matches("1.1.0 2", "1.1.0 3")
    assert not matches("a", "a\nb")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{p}:{n}" for p, n, _, _ in BLOCKS])
def test_docs_block_runs(
    block: tuple[str, int, str, str | None], provider: LocalProvider, tmp_path: Path
) -> None:
    page, line, code, output = block
    shutil.copytree(REPO / "examples" / "reference_app" / "config", tmp_path / "config")
    for config in (REPO / "examples").glob("*/config"):  # pages run from the repository's root
        shutil.copytree(config, tmp_path / "examples" / config.parent.name / "config")
    if "app = FastAPI(" in code and '"/predict"' in code:
        code += DRIVER
    script = tmp_path / f"block_line{line}.py"
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
        f"{page} block at line {line} failed:\n{result.stdout}\n{result.stderr}"
    )
    if output is not None:
        assert matches(output, result.stdout), (
            f"{page} block at line {line} printed:\n{result.stdout}\nexpected:\n{output}"
        )


def test_every_link_in_the_readme_resolves() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://", "#"))]
    assert len(local) >= 10  # the README points into the documentation
    missing = [link for link in local if not (REPO / link.split("#")[0]).exists()]
    assert not missing, missing
    assert len((REPO / "README.md").read_bytes()) <= 15 * 1024


def test_every_page_of_the_docs_is_in_the_site_navigation() -> None:
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert not {page for page in pages if page not in nav}


def test_every_setting_and_yaml_key_is_in_the_configuration_reference() -> None:
    from pydantic import AliasChoices

    from llm_server.core.config import FrameworkSettings
    from llm_server.core.model_config import (
        BudgetConfig,
        BudgetLimitsConfig,
        ModelConfig,
        ModelsConfig,
        RateLimitConfig,
    )

    reference = (REPO / "docs" / "reference" / "configuration.md").read_text()
    for name, field in FrameworkSettings.model_fields.items():
        alias = field.validation_alias
        variable = str(alias.choices[0]) if isinstance(alias, AliasChoices) else name
        assert f"`{variable}`" in reference, variable
    for name in ModelConfig.model_fields:
        assert f"`{name}" in reference, name
    for name in RateLimitConfig.model_fields:
        assert f"`rate_limit.{name}`" in reference or f"/ `{name}`" in reference, name
    for name in ModelsConfig.model_fields:
        assert f"`{name}" in reference, name
    for name in [*BudgetConfig.model_fields, *BudgetLimitsConfig.model_fields]:
        assert f"{name}`" in reference, name
