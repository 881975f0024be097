"""FileSystemStorageAdapter: layout, immutability, identifiers, integrity and leftovers."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from llm_server.core.errors import (
    CorruptProgramError,
    InvalidIdentifierError,
    ProgramError,
    ProgramNotFoundError,
    StorageError,
    VersionExistsError,
)
from llm_server.core.protocols import StorageAdapter
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.programs._fs_storage import MANIFEST_FORMAT
from llm_server.programs._versioning import canonical_json, sha256_hex

STATE: dict[str, Any] = {"demos": [{"input": "a", "output": "b"}], "signature": {"x": 1}}


@pytest.fixture
def adapter(tmp_path: Path) -> FileSystemStorageAdapter:
    return FileSystemStorageAdapter(tmp_path / "programs")


def test_is_a_storage_adapter(adapter: FileSystemStorageAdapter) -> None:
    assert isinstance(adapter, StorageAdapter)


def test_constructing_creates_nothing(tmp_path: Path) -> None:
    adapter = FileSystemStorageAdapter(base_dir=tmp_path / "programs")
    assert adapter.list_versions("p") == []
    assert adapter.list_programs() == []
    assert not (tmp_path / "programs").exists()


def test_save_writes_one_folder_per_version_with_state_and_manifest(
    adapter: FileSystemStorageAdapter,
) -> None:
    stored = adapter.save("prog", STATE, {"score": 0.5})
    folder = adapter.base_dir / "prog" / "1.0.0"
    assert stored.version == "1.0.0"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "state.json"]
    raw = (folder / "state.json").read_bytes()
    assert json.loads(raw) == STATE
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == {
        "format": MANIFEST_FORMAT,
        "program_id": "prog",
        "version": "1.0.0",
        "score": 0.5,
        "state_sha256": sha256_hex(raw),
        "state_bytes": len(raw),
    }
    assert raw == canonical_json(STATE)


def test_versions_are_assigned_monotonically(adapter: FileSystemStorageAdapter) -> None:
    versions = [adapter.save("prog", {"i": i}, {}).version for i in range(12)]
    assert versions == [f"1.{i}.0" for i in range(12)]
    assert adapter.list_versions("prog") == versions  # numeric order, not string order


def test_numbering_continues_after_the_highest_version(adapter: FileSystemStorageAdapter) -> None:
    adapter.save("prog", {}, {}, version="2.5.3")
    assert adapter.save("prog", {}, {}).version == "2.6.0"


def test_load_returns_latest_or_pinned(adapter: FileSystemStorageAdapter) -> None:
    adapter.save("prog", {"i": 0}, {})
    adapter.save("prog", {"i": 1}, {"notes": "second"})
    latest = adapter.load("prog")
    assert (latest.version, latest.state, latest.manifest["notes"]) == ("1.1.0", {"i": 1}, "second")
    assert adapter.load("prog", "1.0.0").state == {"i": 0}


def test_programs_are_kept_apart(adapter: FileSystemStorageAdapter) -> None:
    adapter.save("a", {"who": "a"}, {})
    adapter.save("b", {"who": "b"}, {})
    assert adapter.load("a").state == {"who": "a"}
    assert adapter.list_programs() == ["a", "b"]


def test_explicit_existing_version_is_never_overwritten(
    adapter: FileSystemStorageAdapter,
) -> None:
    adapter.save("prog", {"i": 0}, {})
    with pytest.raises(VersionExistsError, match=r"1\.0\.0"):
        adapter.save("prog", {"i": 1}, {}, version="1.0.0")
    assert adapter.load("prog", "1.0.0").state == {"i": 0}
    assert adapter.list_versions("prog") == ["1.0.0"]
    assert [p.name for p in (adapter.base_dir / "prog").iterdir()] == ["1.0.0"]  # no leftovers


def test_a_stray_entry_named_like_a_version_is_skipped(adapter: FileSystemStorageAdapter) -> None:
    adapter.save("prog", {}, {})
    (adapter.base_dir / "prog" / "1.1.0").write_text("not a version")
    (adapter.base_dir / "prog" / "1.2.0").mkdir()  # empty folder: rename could replace it
    assert adapter.save("prog", {"i": 1}, {}).version == "1.3.0"
    assert (adapter.base_dir / "prog" / "1.1.0").read_text() == "not a version"


@pytest.mark.parametrize("make_entry", [Path.mkdir, lambda p: p.write_text("x")])
def test_an_explicit_version_never_replaces_an_existing_entry(
    adapter: FileSystemStorageAdapter, make_entry: Any
) -> None:
    adapter.save("prog", {}, {})
    entry = adapter.base_dir / "prog" / "2.0.0"
    make_entry(entry)  # rename() alone would silently replace an empty folder
    with pytest.raises(VersionExistsError):
        adapter.save("prog", {"i": 1}, {}, version="2.0.0")
    assert not any(entry.iterdir()) if entry.is_dir() else entry.read_text() == "x"


def test_unknown_program_or_version(adapter: FileSystemStorageAdapter) -> None:
    with pytest.raises(ProgramNotFoundError, match="no stored versions"):
        adapter.load("prog")
    adapter.save("prog", {}, {})
    with pytest.raises(ProgramNotFoundError, match=r"no version '9\.0\.0'.*1\.0\.0"):
        adapter.load("prog", "9.0.0")


@pytest.mark.parametrize(
    "program_id",
    [
        "",
        "..",
        "../evil",
        "a/../../evil",
        "/etc",
        "/abs/path",
        "a/b",
        "a\\b",
        "C:evil",
        "nul\x00byte",
        ".hidden",
        ".tmp-x",
        "a..b",
        "x" * 101,
        "Predictor",  # upper case would collide with 'predictor' on case-insensitive disks
        "sp ace",
        "newline\n",
        "ünïcode",
    ],
)
def test_unsafe_program_ids_are_refused_everywhere(
    adapter: FileSystemStorageAdapter, tmp_path: Path, program_id: str
) -> None:
    with pytest.raises(InvalidIdentifierError):
        adapter.save(program_id, STATE, {})
    with pytest.raises(InvalidIdentifierError):
        adapter.load(program_id)
    with pytest.raises(InvalidIdentifierError):
        adapter.list_versions(program_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


def test_program_id_limits_are_inclusive(adapter: FileSystemStorageAdapter) -> None:
    for program_id in ["x" * 100, "a", "0", "text_summarizer", "v1.2-beta"]:
        assert adapter.save(program_id, {}, {}).program_id == program_id


@pytest.mark.parametrize(
    "version",
    ["", "..", "../1.0.0", "1.0.0/../..", "/1.0.0", "1.0", "1.0.0.0", "v1.0.0", "01.0.0",
     "1.0.0\x00", "1." + "9" * 300 + ".0", "latest", "1.0.0 "],
)  # fmt: skip
def test_unsafe_versions_are_refused(adapter: FileSystemStorageAdapter, version: str) -> None:
    adapter.save("prog", STATE, {})
    with pytest.raises(InvalidIdentifierError):
        adapter.load("prog", version)
    with pytest.raises(InvalidIdentifierError):
        adapter.save("prog", STATE, {}, version=version)


def test_non_json_state_is_refused_before_writing(adapter: FileSystemStorageAdapter) -> None:
    with pytest.raises(ProgramError, match="JSON"):
        adapter.save("prog", {"f": object()}, {})
    with pytest.raises(ProgramError, match="JSON"):
        adapter.save("prog", {"nan": float("nan")}, {})
    with pytest.raises(ProgramError, match="JSON"):
        adapter.save("prog", {}, {"optimizer": object()})
    assert adapter.list_versions("prog") == []


def test_adapter_owned_manifest_keys_cannot_be_forged(adapter: FileSystemStorageAdapter) -> None:
    stored = adapter.save("prog", STATE, {"version": "9.9.9", "state_sha256": "0" * 64})
    assert stored.manifest["version"] == "1.0.0"
    assert adapter.load("prog").manifest["state_sha256"] != "0" * 64


# --- tampering ---------------------------------------------------------------------------------


def _version_dir(adapter: FileSystemStorageAdapter) -> Path:
    adapter.save("prog", STATE, {})
    return adapter.base_dir / "prog" / "1.0.0"


def _truncate_state(folder: Path) -> None:
    raw = (folder / "state.json").read_bytes()
    (folder / "state.json").write_bytes(raw[: len(raw) // 2])


def _edit_state(folder: Path) -> None:
    (folder / "state.json").write_text(json.dumps({**STATE, "demos": []}))


def _invalid_state_json_with_matching_hash(folder: Path) -> None:
    raw = b"{not json"
    (folder / "state.json").write_bytes(raw)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["state_sha256"] = sha256_hex(raw)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _state_is_a_list(folder: Path) -> None:
    raw = b"[1, 2]"
    (folder / "state.json").write_bytes(raw)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["state_sha256"] = sha256_hex(raw)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _truncate_manifest(folder: Path) -> None:
    raw = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").write_bytes(raw[:20])


def _manifest_for_another_program(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "program_id": "other"}))


def _manifest_for_another_version(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": "1.1.0"}))


def _manifest_without_hash(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["state_sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _manifest_not_utf8(folder: Path) -> None:
    (folder / "manifest.json").write_bytes(b"\xff\xfe{}")


def _delete_state(folder: Path) -> None:
    (folder / "state.json").unlink()


def _delete_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


def _state_is_a_symlink(folder: Path) -> None:
    outside = folder.parent.parent.parent / "outside.json"
    outside.write_bytes((folder / "state.json").read_bytes())
    (folder / "state.json").unlink()
    (folder / "state.json").symlink_to(outside)


@pytest.mark.parametrize(
    ("tamper", "file_named"),
    [
        (_truncate_state, "state.json"),
        (_edit_state, "state.json"),
        (_invalid_state_json_with_matching_hash, "state.json"),
        (_state_is_a_list, "state.json"),
        (_truncate_manifest, "manifest.json"),
        (_manifest_for_another_program, "manifest.json"),
        (_manifest_for_another_version, "manifest.json"),
        (_manifest_without_hash, "manifest.json"),
        (_manifest_not_utf8, "manifest.json"),
        (_delete_state, "state.json"),
        (_delete_manifest, "manifest.json"),
        (_state_is_a_symlink, "state.json"),
    ],
)
def test_tampered_or_truncated_versions_are_refused_naming_the_file(
    adapter: FileSystemStorageAdapter, tamper: Any, file_named: str
) -> None:
    folder = _version_dir(adapter)
    tamper(folder)
    with pytest.raises(CorruptProgramError) as caught:
        adapter.load("prog", "1.0.0")
    assert str(folder / file_named) in str(caught.value)


def test_a_version_folder_that_is_a_symlink_is_not_listed_nor_loaded(
    adapter: FileSystemStorageAdapter, tmp_path: Path
) -> None:
    _version_dir(adapter)
    (adapter.base_dir / "prog" / "2.0.0").symlink_to(tmp_path)
    assert adapter.list_versions("prog") == ["1.0.0"]
    with pytest.raises(CorruptProgramError, match="not a folder"):
        adapter.load("prog", "2.0.0")


# --- leftovers of crashed saves -----------------------------------------------------------------


def _leftover(adapter: FileSystemStorageAdapter, name: str) -> Path:
    folder = adapter.base_dir / "prog" / name
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"half":')
    return folder


def test_temporary_folders_are_invisible(adapter: FileSystemStorageAdapter) -> None:
    adapter.save("prog", {"i": 0}, {})
    _leftover(adapter, ".tmp-otherhost-1-abc")
    assert adapter.list_versions("prog") == ["1.0.0"]
    assert adapter.load("prog").state == {"i": 0}
    assert adapter.save("prog", {"i": 1}, {}).version == "1.1.0"


def test_cleanup_removes_folders_of_dead_local_writers_only(
    adapter: FileSystemStorageAdapter,
) -> None:
    from llm_server.programs._fs_storage import _HOST

    dead = _leftover(adapter, f".tmp-{_HOST}-{2**22 + 12345}-dead")  # above pid_max default
    alive = _leftover(adapter, f".tmp-{_HOST}-{os.getpid()}-alive")
    foreign = _leftover(adapter, ".tmp-someotherhost-1-young")
    assert adapter.cleanup_stale() == 1
    assert not dead.exists()
    assert alive.exists()
    assert foreign.exists()


def test_cleanup_removes_old_folders_it_cannot_check(tmp_path: Path) -> None:
    now = [1_000_000.0]
    adapter = FileSystemStorageAdapter(tmp_path, stale_temp_after_s=60, clock=lambda: now[0])
    foreign = _leftover(adapter, ".tmp-someotherhost-1-old")
    os.utime(foreign, (now[0] - 30, now[0] - 30))
    assert adapter.cleanup_stale("prog") == 0
    now[0] += 31
    assert adapter.cleanup_stale("prog") == 1
    assert not foreign.exists()


def test_cleanup_removes_old_folders_even_when_their_pid_runs_again(tmp_path: Path) -> None:
    from llm_server.programs._fs_storage import _HOST

    now = [1_000_000.0]
    adapter = FileSystemStorageAdapter(tmp_path, stale_temp_after_s=60, clock=lambda: now[0])
    reused = _leftover(adapter, f".tmp-{_HOST}-{os.getpid()}-reused")
    os.utime(reused, (now[0] - 61, now[0] - 61))
    assert adapter.cleanup_stale("prog") == 1


def test_saving_cleans_up_stale_leftovers(adapter: FileSystemStorageAdapter) -> None:
    from llm_server.programs._fs_storage import _HOST

    dead = _leftover(adapter, f".tmp-{_HOST}-{2**22 + 7}-dead")
    adapter.save("prog", {}, {})
    assert not dead.exists()


def test_file_system_errors_become_storage_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the base folder should be")
    adapter = FileSystemStorageAdapter(tmp_path / "file")
    with pytest.raises(StorageError):
        adapter.save("prog", {}, {})


def test_threads_saving_at_once_get_distinct_versions(adapter: FileSystemStorageAdapter) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def save(writer: int) -> None:
        for i in range(10):
            version = adapter.save("prog", {"writer": writer, "i": i}, {}).version
            with lock:
                results.append(version)

    threads = [threading.Thread(target=save, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(set(results)) == 40
    assert adapter.list_versions("prog") == sorted(results, key=lambda v: int(v.split(".")[1]))
    states = {(s["writer"], s["i"]) for s in (adapter.load("prog", v).state for v in results)}
    assert states == {(w, i) for w in range(4) for i in range(10)}


def test_a_save_is_durable_in_order_fsync_rename_then_folder_fsync(
    adapter: FileSystemStorageAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The order that survives a power cut: each file's bytes reach the disk before it is
    # renamed into place, the folder's entries before the folder is published, and the
    # publishing rename before save() returns.
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(source: Any, target: Any) -> None:
        real_replace(source, target)
        events.append(("replace", str(target)))

    def rename(source: Any, target: Any) -> None:
        real_rename(source, target)
        events.append(("rename", str(target)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    stored = adapter.save("prog", STATE, {})

    version_dir = str(adapter.base_dir / "prog" / stored.version)
    names = [(kind, Path(path).name) for kind, path in events]
    published = names.index(("rename", stored.version))
    for file in ("state.json", "manifest.json"):
        synced = names.index(("fsync", f"{file}.part"))
        assert synced < names.index(("replace", file)) < published, names
    temp_synced = max(
        i for i, (kind, path) in enumerate(events) if kind == "fsync" and i < published
    )
    assert Path(events[temp_synced][1]).name.startswith(".tmp-"), names  # the folder itself
    assert events[published + 1] == ("fsync", str(adapter.base_dir / "prog")), names
    assert Path(version_dir, "state.json").is_file()
