"""The playground in a real headless browser (Debian's Chromium, driven by Playwright), against
``examples/playground_app`` served by uvicorn and the local provider.

The accessibility check is axe-core itself, at the version ``package-lock.json`` (beside this
file) pins, installed with ``npm ci`` into ``tests/web/node_modules`` the first time.

Without ``/usr/bin/chromium`` (``apt-get install chromium``) or ``npm`` (``apt-get install
npm``) these skip, saying so; under ``CI=true`` they fail. Playwright's own browser download is
never used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import dspy
import pytest

from _app_processes import copy_example, serving_app
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
WEB = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = REPO / "docs" / "images" / "playground.png"
AXE = WEB / "node_modules" / "axe-core" / "axe.min.js"


def _missing(message: str) -> NoReturn:
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
            dspy.Example(topic="t", words=3, keywords=["k"], tone="plain", brief="b").with_inputs(
                "topic", "words", "keywords", "tone"
            )
        ]
        return programs.save_program_version("brief", tuned, optimizer="manual").version
    finally:
        sys.modules.pop("main", None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with no background traffic."""
    if not Path(CHROMIUM).exists():
        _missing("Chromium is not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core's ``axe.min.js`` at the pinned version (``npm ci`` when it is missing)."""
    lock = json.loads((WEB / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/axe-core"]["version"]
    installed = AXE.parent / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != pinned:
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm is not installed (apt-get install npm): it installs axe-core")
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=WEB,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed in {WEB}:\n{done.stderr[-3000:]}"
    return AXE.read_text()


@dataclass
class Playground:
    """The example app served, its provider, and a fresh page (its own storage) on it."""

    page: Page
    provider: LocalProvider
    url: str
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        """Press Run from the keyboard and wait until every run it started has finished."""
        self.page.focus("#run")
        self.page.keyboard.press("Enter")
        self.page.wait_for_function(
            "document.querySelector('#status').textContent === 'Done.'", timeout=30_000
        )

    def fill_brief(self) -> None:
        self.page.fill("#input-topic", "circuit breakers")
        self.page.fill("#input-words", "40")
        self.page.fill("#input-keywords", "fleet\nRedis")

    def focused(self) -> str:
        """The focused element's id (its tag name when it has none: ``BODY``)."""
        active = "document.activeElement.id || document.activeElement.tagName"
        return str(self.page.evaluate(active))

    def unexpected_errors(self) -> list[str]:
        """Console errors, less the browser's own line for each 4xx/5xx answer."""
        return [e for e in self.errors if "Failed to load resource" not in e]


@pytest.fixture
def playground(browser: Browser, tmp_path: Path) -> Iterator[Playground]:
    copy_example("playground_app", tmp_path)
    assert second_version(tmp_path) == "1.1.0"
    env = {"OTEL_ENABLED": "false"}
    with (
        LocalProvider() as provider,
        serving_app(tmp_path, env={**env, "LLM_SERVER_PROVIDER_URL": provider.base_url}) as url,
    ):
        provider.chunk_delay_s = 0.01  # the answer arrives piece by piece
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        session = Playground(page, provider, url)
        page.on("console", lambda m: session.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: session.errors.append(str(e)))
        page.goto(f"{url}/playground")
        page.wait_for_selector("#input-topic")
        yield session
        context.close()


def axe_violations(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now: rule, impact and where."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_source)
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                          where: v.nodes.map((n) => n.target.join(" "))}))"""
    )
    return found


def test_the_playground_in_a_real_browser(playground: Playground) -> None:
    page, provider = playground.page, playground.provider
    figures = page.locator("#figures")  # live figures of the served version (no canary)
    assert figures.is_visible()
    assert "Served" in figures.inner_text()
    assert "1.1.0" in figures.inner_text()
    assert "Canary" not in figures.inner_text()

    # the form from Brief's typed inputs: str, int, list[str], Literal
    assert page.get_attribute("#input-topic", "data-kind") == "string"
    assert page.get_attribute("#input-words", "type") == "number"
    assert page.get_attribute("#input-keywords", "data-kind") == "lines"
    assert page.get_attribute("#input-tone", "data-kind") == "choice"
    assert page.input_value(".side[data-side=a] select[name=version]") == "1.1.0"

    playground.fill_brief()
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
    playground.run()
    for side, version in (("a", "1.0.0"), ("b", "1.1.0")):
        card = page.locator(f".result[data-side={side}]")
        card.locator("table.meta").wait_for(timeout=30_000)
        assert f"brief {version}" in card.locator("h2").inner_text().lower()
        assert version in card.locator("table.meta").inner_text()
    shot = page.screenshot(full_page=True)
    if os.environ.get("LLM_SERVER_UPDATE_SCREENSHOTS") == "1":  # for the docs
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(shot)
    assert not playground.errors, playground.errors

    # an open breaker, shown readably (both models down, each breaker trips after 2)
    page.uncheck("#compare")
    provider.add_fault(500)
    for _ in range(3):
        playground.run()
    message = page.locator(".result[data-side=a] .error").inner_text()
    assert "circuit_open" in message
    assert "circuit breaker" in message
    assert page.locator("#history li").count() >= 5  # the runs, kept in this browser
    assert not playground.unexpected_errors(), playground.errors


def test_the_page_passes_axe_core_in_every_state(playground: Playground, axe_source: str) -> None:
    page, provider = playground.page, playground.provider
    found: dict[str, list[dict[str, Any]]] = {"at load": axe_violations(page, axe_source)}

    playground.fill_brief()
    playground.run()
    page.locator(".result[data-side=a] table.meta").wait_for()
    found["after a run"] = axe_violations(page, axe_source)

    rule = provider.add_fault("bad_request")  # every model refuses: no output at all
    playground.run()
    assert page.locator(".result[data-side=a] .error").is_visible()
    assert page.locator(".result[data-side=a] pre").first.inner_text() == ""
    found["after a failed run"] = axe_violations(page, axe_source)
    provider.remove_rule(rule)

    page.check("#compare")
    playground.run()
    page.locator(".result[data-side=b] table.meta").wait_for()
    found["comparing two runs"] = axe_violations(page, axe_source)

    # Measured before the fix: 1 serious (aria-prohibited-attr: an aria-label on a role-less,
    # still empty <pre>) after a failed run, none of any impact in the other states.
    assert found == {state: [] for state in found}, json.dumps(found, indent=1)
    assert not playground.unexpected_errors(), playground.errors


def test_focus_stays_on_run_during_and_after_a_run(playground: Playground) -> None:
    page, provider = playground.page, playground.provider
    playground.fill_brief()
    delay = provider.add_latency(2.0)
    page.focus("#run")
    page.keyboard.press("Enter")
    page.wait_for_selector("#run[aria-disabled=true]")
    assert playground.focused() == "run"
    page.keyboard.press("Enter")  # a second press while running starts nothing
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'")
    assert playground.focused() == "run"
    assert page.get_attribute("#run", "aria-disabled") != "true"
    assert page.locator("#history li").count() == 1
    provider.remove_rule(delay)

    provider.add_fault("bad_request")  # after a failed run too
    playground.run()
    assert page.locator(".result[data-side=a] .error").is_visible()
    assert playground.focused() == "run"


def test_a_literal_field_offers_its_choices(playground: Playground) -> None:
    page, provider = playground.page, playground.provider
    tone = page.locator("#input-tone")
    assert tone.evaluate("node => node.tagName") == "SELECT"
    assert tone.locator("option").all_inner_texts() == ["plain", "formal", "playful"]
    assert page.locator("label[for=input-tone]").inner_text() == "Tone"

    playground.fill_brief()
    page.select_option("#input-tone", label="formal")
    playground.run()
    page.locator(".result[data-side=a] table.meta").wait_for()
    prompt = json.dumps(provider.requests[-1].messages)
    assert "formal" in prompt
    assert "playful" in prompt  # DSPy tells the model the choices too

    page.click("#history li button")  # a run put back in the form keeps its choice
    assert tone.locator("option:checked").inner_text() == "formal"


def test_the_run_and_the_history_name_the_model_that_answered(playground: Playground) -> None:
    page, provider = playground.page, playground.provider
    assert page.input_value(".side[data-side=a] select[name=model]") == "gpt-4o-mini"
    provider.add_fault("unavailable", model="gpt-4o-mini")  # gpt-4o-mini falls back to gpt-4o
    playground.fill_brief()
    playground.run()
    card = page.locator(".result[data-side=a]")
    card.locator("table.meta").wait_for()
    assert [r.model for r in provider.requests if r.api] == ["gpt-4o-mini", "gpt-4o"]
    answered = "gpt-4o (fallback from gpt-4o-mini)"
    assert card.locator("h2").inner_text().endswith(f"on {answered}")
    assert f"model\t{answered}" in card.locator("table.meta").inner_text()
    assert f"on {answered}: ok" in page.locator("#history li").first.inner_text()
