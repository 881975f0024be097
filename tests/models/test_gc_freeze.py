"""The first ModelManager of a process freezes the startup heap, once, unless turned off; a
manager raises the young generation's threshold unless the host tuned it or turned it off."""

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

if len(sys.argv) > 2:
    gc.set_threshold(int(sys.argv[2]), 10, 10)  # a host that tuned its collector
print("BEFORE", gc.get_freeze_count())
print("YOUNG_BEFORE", gc.get_threshold()[0])
first = ModelManager(config_provider=YamlConfigProvider(sys.argv[1]), settings=FrameworkSettings())
after_first = gc.get_freeze_count()
print("FIRST", after_first)
print("YOUNG_AFTER", gc.get_threshold()[0])
print("OLDER_AFTER", gc.get_threshold()[1] * 100 + gc.get_threshold()[2])
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


def _run(tmp_path: Path, *args: str, **env: str) -> dict[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVER_")}
    environ.update(HOME=str(tmp_path), **env)
    config = tmp_path / "models.yml"
    config.write_text(_CONFIG, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(config), *args],
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

    assert {k: counts[k] for k in ("BEFORE", "FIRST", "SECOND", "COLLECTED")} == {
        "BEFORE": 0,
        "FIRST": 0,
        "SECOND": 0,
        "COLLECTED": 1,
    }


@pytest.mark.parametrize(
    ("env", "expected"), [({}, 7000), ({"LLM_SERVER_GC_YOUNG_THRESHOLD": "20000"}, 20000)]
)
def test_the_young_generation_is_collected_less_often(
    tmp_path: Path, env: dict[str, str], expected: int
) -> None:
    counts = _run(tmp_path, **env)

    assert counts["YOUNG_BEFORE"] == 700  # Python's own
    assert counts["YOUNG_AFTER"] == expected
    assert counts["OLDER_AFTER"] == 10 * 100 + 10  # the older generations' are kept


def test_the_young_threshold_can_be_kept_and_a_hosts_own_is_kept(tmp_path: Path) -> None:
    kept = _run(tmp_path, LLM_SERVER_GC_YOUNG_THRESHOLD="0")
    hosts = _run(tmp_path, "1500")

    assert (kept["YOUNG_BEFORE"], kept["YOUNG_AFTER"]) == (700, 700)
    assert (hosts["YOUNG_BEFORE"], hosts["YOUNG_AFTER"]) == (1500, 1500)
