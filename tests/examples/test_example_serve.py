"""examples/serve.py really serves: the local provider and the app in one command."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
from _example_helpers import EXAMPLES, PYTHON, copy_example, free_port, running, stop


def test_serve_starts_the_provider_and_the_reference_app(tmp_path: Path) -> None:
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy2(EXAMPLES / "serve.py", folder / "serve.py")
    copy_example("reference_app", folder)
    port = free_port()
    log = tmp_path / "serve.log"
    command = [PYTHON, str(folder / "serve.py")]
    with running(
        command, cwd=tmp_path, env={"PORT": str(port)}, url=f"http://127.0.0.1:{port}/docs", log=log
    ) as process:
        response = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"prompt": "Hello, world!"}, timeout=30
        )
        assert stop(process) == 0, log.read_text()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"] == {"response": "echo: Hello, world!"}
    assert body["metadata"]["model"]["id"] == "gpt-4o-mini"
    assert body["metadata"]["performance"]["tokens"]["input"] > 0
    output = log.read_text()
    assert re.search(r"local test provider on http://127\.0\.0\.1:\d+", output)
    assert f"try: curl -X POST http://127.0.0.1:{port}/predict" in output
    assert (folder / "reference_app" / "dspy_programs" / "predictor" / "1.0.0").is_dir()
