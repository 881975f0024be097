"""A newcomer's first run: a fresh clone, the README's two set-up commands as written.

Slow (it installs the package and its dependencies from the package index into a new
virtualenv): run with ``pytest -m slow tests/examples/test_example_newcomer.py``.

The commands are read from README.md's "Set up" section, so the README and this test cannot
drift apart. The first command installs and then serves the example app until stopped; it is
started in the background, asked one question, and stopped with Ctrl-C (SIGINT). The second
command runs the test suite; it is run exactly as written with ``-k public_api`` appended, so
it still collects (imports) every test module in the fresh environment but runs only the
public-API tests: the full suite is what the rest of CI runs, and repeating it here would
multiply this test's time without testing the set-up any further.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from _example_helpers import REPO, free_port, wait_until_up

INSTALL_TIMEOUT_S = 900.0


def setup_commands(readme: str) -> list[str]:
    """The ```bash blocks of the README's "## Set up" section, in order."""
    match = re.search(r"^## Set up\n(.*?)(?=^## )", readme, flags=re.MULTILINE | re.DOTALL)
    assert match, 'README.md has no "## Set up" section'
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.MULTILINE | re.DOTALL)
    return [block.strip() for block in blocks]


def test_the_readme_has_two_set_up_commands() -> None:
    commands = setup_commands((REPO / "README.md").read_text())
    assert len(commands) == 2, commands
    assert "examples/serve.py" in commands[0]
    assert "pytest" in commands[1]


def newcomer_env(port: int) -> dict[str, str]:
    """The environment of a fresh shell: no virtualenv active, the example on ``port``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"} and not k.startswith("PYTEST")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if "venv" not in p
    )
    env["PORT"] = str(port)  # examples/serve.py's port (default 8000 may be taken here)
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fresh_clone_installs_serves_and_tests(tmp_path: Path) -> None:
    clone = tmp_path / "llm-server"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    serve_command, test_command = setup_commands((clone / "README.md").read_text())
    port = free_port()
    env = newcomer_env(port)
    log = tmp_path / "serve.log"

    started = time.monotonic()
    with log.open("wb") as sink:
        # its own session, so Ctrl-C reaches the whole command (bash, pip, then the server)
        process = subprocess.Popen(
            ["bash", "-c", serve_command],
            cwd=clone,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(
            f"http://127.0.0.1:{port}/docs", process, log, timeout_s=INSTALL_TIMEOUT_S, poll_s=0.5
        )
        ready_after_s = time.monotonic() - started
        response = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"prompt": "Hello, world!"}, timeout=30
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"] == {"response": "echo: Hello, world!"}
    assert body["metadata"]["program"] == {
        "id": "predictor",
        "version": "1.0.0",
        "name": "Text Completion",
    }
    assert body["metadata"]["performance"]["tokens"]["method"] == "dspy_history_exact"
    assert (clone / ".venv" / "bin" / "python").exists()

    tests = subprocess.run(
        ["bash", "-c", f"{test_command} -k public_api"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-5000:] + tests.stderr[-5000:]
    assert re.search(r"\d+ passed", tests.stdout), tests.stdout[-2000:]
    print(f"install + first answer: {ready_after_s:.0f} s; {tests.stdout.strip().splitlines()[-1]}")
