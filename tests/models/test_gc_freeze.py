"""The first ModelManager of a process freezes the startup heap, once, unless turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_CONFIG = """
models:
  gpt-4o-mini:
    model_name: openai/gpt-4o-mini
    api_base: http://127.0.0.1:9/v1
    api_key: test-key
"""

# Builds two managers from the config and prints the freeze count after each.
_SCRIPT = """
import gc, sys, weakref
from llm_server.core.config import FrameworkSettings
from llm_server.defaults import YamlConfigProvider
from llm_server.models.manager import ModelManager

print("BEFORE", gc.get_freeze_count())
first = ModelManager(config_provider=YamlConfigProvider(sys.argv[1]), settings=FrameworkSettings())
after_first = gc.get_freeze_count()
print("FIRST", after_first)
class Node:
    pass
node = Node()
node.self = node  # a cycle made after the freeze stays collectable
alive = weakref.ref(node)
del node
second = ModelManager(config_provider=YamlConfigProvider(sys.argv[1]), settings=FrameworkSettings())
print("SECOND", gc.get_freeze_count())
gc.collect()
print("COLLECTED", int(alive() is None))
"""


def _run(tmp_path: Path, **env: str) -> dict[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVER_")}
    environ.update(HOME=str(tmp_path), **env)
    config = tmp_path / "models.yml"
    config.write_text(_CONFIG, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(config)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        key: int(value)
        for key, value in (line.split() for line in result.stdout.splitlines() if line)
    }


@pytest.mark.parametrize("setting", [None, "true"])
def test_the_first_manager_freezes_the_heap_and_later_ones_do_not(
    tmp_path: Path, setting: str | None
) -> None:
    counts = _run(tmp_path, **({"LLM_SERVER_GC_FREEZE": setting} if setting else {}))

    assert counts["BEFORE"] == 0
    assert counts["FIRST"] > 20_000  # DSPy and the models: the bulk of the heap
    # Not frozen again (that would add the second manager); frozen objects can still be freed.
    assert counts["SECOND"] <= counts["FIRST"]
    assert counts["COLLECTED"] == 1  # garbage made after the freeze is still collected


def test_the_freeze_can_be_turned_off(tmp_path: Path) -> None:
    counts = _run(tmp_path, LLM_SERVER_GC_FREEZE="false")

    assert counts == {"BEFORE": 0, "FIRST": 0, "SECOND": 0, "COLLECTED": 1}
