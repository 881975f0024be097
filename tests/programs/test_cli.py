"""The ``llm-server`` console command without a fleet: clear refusals, versions from files.

The end-to-end runs against PostgreSQL and Redis are in test_canary_processes.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_server._cli import main
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models.predictor import Predictor
from llm_server.models.program_manager import ProgramManager


class NoModels:
    model_info: dict[str, object] = {}  # noqa: RUF012 -- read-only stand-in

    def reliable_backend(
        self, program: object, model_id: str, *, program_metadata: object = None
    ) -> object:
        return program_metadata


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The app's settings for these tests: files under ``tmp_path``, no store, no Redis."""
    for name in ("LLM_SERVER_PROGRAM_STORE", "LLM_SERVER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the repository's
    monkeypatch.setenv("LLM_PROGRAMS_DIR", str(tmp_path / "programs"))
    return tmp_path / "programs"


def test_versions_are_listed_from_the_apps_folder(
    settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manager = ProgramManager(
        model_manager=NoModels(), storage_adapter=FileSystemStorageAdapter(settings)
    )
    manager.register_program(Predictor)
    assert main(["versions", "predictor"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "program_id": "predictor",
        "released": None,
        "versions": ["1.0.0"],
    }


@pytest.mark.parametrize(
    "command",
    [
        ["promote", "predictor", "1.0.0"],
        ["rollback", "predictor"],
        ["canary", "start", "predictor", "1.1.0"],
        ["canary", "watch", "predictor"],
    ],
)
def test_releases_and_canaries_without_the_shared_store_are_refused_in_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(command) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("llm-server: LLM_SERVER_PROGRAM_STORE is not set")
    assert captured.err.count("\n") == 1  # no traceback


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["canary", "end", "predictor", "--outcome", "maybe"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


def test_an_unusable_store_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_SERVER_PROGRAM_STORE", "mysql://admin:hunter2-secret@db/x")
    assert main(["releases", "predictor"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-server: LLM_SERVER_PROGRAM_STORE: the URL must start with")
    assert "hunter2-secret" not in err


def test_traffic_is_handed_to_the_traffic_console(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["traffic", "export"])  # no program id: the traffic console's usage error
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: llm-server traffic export")
    assert "program_id" in err
