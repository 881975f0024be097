"""The first ModelManager of a process freezes the startup heap, once, unless turned off; a
manager raises the young generation's threshold unless the host tuned it or turned it off."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

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


# Every run the tests below read: (script arguments, environment). Each needs an interpreter
# of its own (the first manager of a process is the one that freezes), so they are started
# side by side when the module's first test asks, not one after another.
_VARIANTS: list[tuple[tuple[str, ...], dict[str, str]]] = [
    ((), {}),
    ((), {"LLM_SERVER_GC_FREEZE": "true"}),
    ((), {"LLM_SERVER_GC_FREEZE": "false"}),
    ((), {"LLM_SERVER_GC_YOUNG_THRESHOLD": "20000"}),
    ((), {"LLM_SERVER_GC_YOUNG_THRESHOLD": "0"}),
    (("1500",), {}),
]

Run = Callable[..., dict[str, int]]


def _key(args: tuple[str, ...], env: dict[str, str]) -> tuple[tuple[str, ...], frozenset[Any]]:
    return args, frozenset(env.items())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """``run(*args, **env)``: the counts the script printed in that variant's process."""
    started: dict[tuple[tuple[str, ...], frozenset[Any]], subprocess.Popen[str]] = {}
    try:
        for args, env in _VARIANTS:
            folder = tmp_path_factory.mktemp("gc")  # its own HOME: no shared DSPy cache
            environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVER_")}
            environ.update(HOME=str(folder), **env)
            config = folder / "models.yml"
            config.write_text(_CONFIG, encoding="utf-8")
            started[_key(args, env)] = subprocess.Popen(
                [sys.executable, "-c", _SCRIPT, str(config), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environ,
                cwd=folder,
            )

        outputs: dict[tuple[tuple[str, ...], frozenset[Any]], tuple[str, str]] = {}

        def counts(*args: str, **env: str) -> dict[str, int]:
            key = _key(args, env)
            if key not in outputs:
                outputs[key] = started[key].communicate(timeout=120)
            stdout, stderr = outputs[key]
            assert started[key].returncode == 0, stderr[-3000:]
            return {
                name: int(value)
                for name, value in (line.split() for line in stdout.splitlines() if line)
            }

        yield counts
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.parametrize("setting", [None, "true"])
def test_the_first_manager_freezes_the_heap_and_later_ones_do_not(
    run: Run, setting: str | None
) -> None:
    counts = run(**({"LLM_SERVER_GC_FREEZE": setting} if setting else {}))

    assert counts["BEFORE"] == 0
    assert counts["FIRST"] > 20_000  # DSPy and the models: the bulk of the heap
    # Not frozen again (that would add the second manager); frozen objects can still be freed.
    assert counts["SECOND"] <= counts["FIRST"]
    assert counts["COLLECTED"] == 1  # garbage made after the freeze is still collected


def test_the_freeze_can_be_turned_off(run: Run) -> None:
    counts = run(LLM_SERVER_GC_FREEZE="false")

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
    run: Run, env: dict[str, str], expected: int
) -> None:
    counts = run(**env)

    assert counts["YOUNG_BEFORE"] == 700  # Python's own
    assert counts["YOUNG_AFTER"] == expected
    assert counts["OLDER_AFTER"] == 10 * 100 + 10  # the older generations' are kept


def test_the_young_threshold_can_be_kept_and_a_hosts_own_is_kept(run: Run) -> None:
    kept = run(LLM_SERVER_GC_YOUNG_THRESHOLD="0")
    hosts = run("1500")

    assert (kept["YOUNG_BEFORE"], kept["YOUNG_AFTER"]) == (700, 700)
    assert (hosts["YOUNG_BEFORE"], hosts["YOUNG_AFTER"]) == (1500, 1500)
