"""Helpers shared by the fleet tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pytest_redis.executor import RedisExecutor

from _app_processes import copy_example, serving_app
from llm_server.fleet import FleetConnection

Connect = Callable[..., FleetConnection]
"""The ``connect`` fixture: ``connect(url=..., timeout_s=...)`` -> a new FleetConnection."""


def url_of(executor: RedisExecutor) -> str:
    """The ``redis://`` URL of a private server."""
    return f"redis://{executor.host}:{executor.port}/0"


FLEET_APP = Path(__file__).resolve().parents[2] / "examples" / "fleet_app"


@contextmanager
def uvicorn_fleet(
    folder: Path, *, workers: int, env: Mapping[str, str], timeout_s: float = 120.0
) -> Iterator[str]:
    """``examples/fleet_app`` (copied to ``folder``) under ``uvicorn --workers N``; its URL."""
    copy_example("fleet_app", folder)
    with serving_app(folder, env=env, workers=workers, timeout_s=timeout_s) as url:
        yield url
