"""The playground in a real headless browser (Debian's Chromium, driven by Playwright), against
``examples/playground_app`` served by uvicorn and the local provider.

Without ``/usr/bin/chromium`` (``apt-get install chromium``) this skips; under ``CI=true`` it
fails. Playwright's own browser download is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest

from _app_processes import copy_example, serving_app
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = REPO / "docs" / "images" / "playground.png"


def _need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = "Chromium is not installed: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class NoModels:
    def __init__(self) -> None:
        self.model_info: dict[str, Any] = {}

    def reliable_backend(self, program: Any, model_id: str, *, program_metadata: Any = None) -> Any:
        return program_metadata


def second_version(folder: Path) -> str:
    """Store brief 1.1.0 (a demo added) beside 1.0.0, as a notebook would."""
    spec = importlib.util.spec_from_file_location("main", folder / "main.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    try:
        spec.loader.exec_module(module)
        programs = ProgramManager(
            model_manager=NoModels(),
            storage_adapter=FileSystemStorageAdapter(folder / "dspy_programs"),
        )
        programs.register_program(module.Brief)
        tuned = dspy.Predict(module.Brief)
        tuned.demos = [
            dspy.Example(topic="t", words=3, keywords=["k"], brief="b").with_inputs(
                "topic", "words", "keywords"
            )
        ]
        return programs.save_program_version("brief", tuned, optimizer="manual").version
    finally:
        sys.modules.pop("main", None)


def test_the_playground_in_a_real_browser(tmp_path: Path) -> None:
    _need_chromium()
    from playwright.sync_api import sync_playwright

    copy_example("playground_app", tmp_path)
    assert second_version(tmp_path) == "1.1.0"
    errors: list[str] = []
    with (
        LocalProvider() as provider,
        sync_playwright() as p,
        serving_app(
            tmp_path, env={"LLM_SERVER_PROVIDER_URL": provider.base_url, "OTEL_ENABLED": "false"}
        ) as url,
    ):
        provider.chunk_delay_s = 0.01  # the answer arrives piece by piece
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/playground")
        page.wait_for_selector("#input-topic")
        figures = page.locator("#figures")  # live figures of the served version (no canary)
        assert figures.is_visible()
        assert "Served" in figures.inner_text()
        assert "1.1.0" in figures.inner_text()
        assert "Canary" not in figures.inner_text()

        # the form from Brief's typed inputs: str, int, list[str]
        assert page.get_attribute("#input-topic", "data-kind") == "string"
        assert page.get_attribute("#input-words", "type") == "number"
        assert page.get_attribute("#input-keywords", "data-kind") == "lines"
        assert page.input_value(".side[data-side=a] select[name=version]") == "1.1.0"

        page.fill("#input-topic", "circuit breakers")
        page.fill("#input-words", "40")
        page.fill("#input-keywords", "fleet\nRedis")
        page.click("#run")
        result = page.locator(".result[data-side=a]")
        result.locator("table.meta").wait_for(timeout=30_000)
        assert "echo: circuit breakers" in result.locator("pre").first.inner_text()
        meta = result.locator("table.meta").inner_text()
        assert "in +" in meta  # tokens
        assert "$" in meta  # cost
        assert "first token" in meta
        assert provider.requests[-1].stream  # the page used the streaming route

        # compare two versions side by side
        page.check("#compare")
        page.select_option(".side[data-side=a] select[name=version]", "1.0.0")
        page.select_option(".side[data-side=b] select[name=version]", "1.1.0")
        page.click("#run")
        for side, version in (("a", "1.0.0"), ("b", "1.1.0")):
            card = page.locator(f".result[data-side={side}]")
            card.locator("table.meta").wait_for(timeout=30_000)
            assert f"brief {version}" in card.locator("h2").inner_text().lower()
            assert version in card.locator("table.meta").inner_text()
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("LLM_SERVER_UPDATE_SCREENSHOTS") == "1":  # for the docs
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copy2(shot, SCREENSHOT)
        assert not errors, errors

        # an open breaker, shown readably (both models down, each breaker trips after 2)
        page.uncheck("#compare")
        provider.add_fault(500)
        for _ in range(3):
            page.click("#run")
            page.wait_for_selector("#run:not([disabled])")
        message = page.locator(".result[data-side=a] .error").inner_text()
        assert "circuit_open" in message
        assert "circuit breaker" in message
        history = page.locator("#history li")
        assert history.count() >= 5  # the runs, kept in this browser
        browser.close()
    unexpected = [e for e in errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected
