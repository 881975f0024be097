"""The suite fails instead of hanging: every test runs under a timeout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path


def test_a_test_that_hangs_fails_with_a_timeout(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(
        textwrap.dedent(
            """
            import time

            def test_hangs():
                time.sleep(3600)
            """
        )
    )
    root = Path(__file__).parents[1]
    # The project's pytest configuration, with pytest-timeout as installed; the plugins that
    # only bring fixtures or test generators this run never uses stay out (their imports were
    # ~5 of the ~7 s the run took).
    unused = ["-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:pytest_redis"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *unused,
         "-o", "timeout=1", "-c", str(root / "pyproject.toml"), "--rootdir", str(tmp_path),
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout" in result.stdout
    assert "1 failed" in result.stdout


def test_the_default_suite_has_a_per_test_timeout() -> None:
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    options = config["tool"]["pytest"]["ini_options"]
    assert 0 < int(options["timeout"]) <= 120
