"""ProgramManager: registration, ids, pinning, versions with lineage, class checks, async."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy
import pytest
from pydantic import BaseModel

from llm_server.core.errors import (
    CorruptProgramError,
    InvalidIdentifierError,
    ProgramAlreadyRegisteredError,
    ProgramError,
    ProgramNotFoundError,
)
from llm_server.core.protocols import StoredProgram
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models._versioning import canonical_json, hash_trainset, sha256_hex
from llm_server.models.predictor import Predictor
from llm_server.models.program_manager import (
    LATEST,
    ModelManagerLike,
    ProgramManager,
    ProgramMetadata,
)

NOW = datetime(2025, 8, 1, 10, 30, 0, 123456, tzinfo=UTC)


class Summarize(dspy.Signature):
    """Summarize the text."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()


class TextSummarizer(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.ChainOfThought(Summarize)
        self.polish = dspy.Predict("summary -> final")

    def forward(self, text: str) -> Any:
        return self.polish(summary=self.draft(text=text).summary)


class NeedsArguments(dspy.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size


class ModelInfo(BaseModel):
    id: str
    provider: str


class StandInModelManager:
    """The two things ProgramManager uses from ModelManager."""

    def __init__(self) -> None:
        self.model_info = {"m": ModelInfo(id="m", provider="openai")}
        self.backends: list[tuple[Any, str, Any]] = []

    def reliable_backend(self, program: Any, model_id: str, *, program_metadata: Any = None) -> Any:
        self.backends.append((program, model_id, program_metadata))
        return ("composed backend", model_id)


@pytest.fixture
def storage(tmp_path: Path) -> FileSystemStorageAdapter:
    return FileSystemStorageAdapter(tmp_path / "programs")


@pytest.fixture
def manager(storage: FileSystemStorageAdapter) -> ProgramManager:
    return _manager(storage)


def _manager(storage: Any) -> ProgramManager:
    return ProgramManager(
        model_manager=StandInModelManager(), storage_adapter=storage, clock=lambda: NOW
    )


def _with_demos(program: Any, *pairs: tuple[str, str]) -> Any:
    program.demos = [dspy.Example(input=i, output=o).with_inputs("input") for i, o in pairs]
    return program


# --- registration ------------------------------------------------------------------------------


def test_register_gives_the_envelope_program_block(manager: ProgramManager) -> None:
    metadata = manager.register_program(program_class=Predictor, name="Text Completion")
    assert metadata.model_dump() == {
        "id": "predictor",
        "version": "1.0.0",
        "name": "Text Completion",
    }
    assert manager.registry.get_program_metadata("predictor") == metadata
    assert metadata.class_path == "llm_server.models.predictor.Predictor"
    assert metadata.created_at == "2025-08-01T10:30:00.123456Z"
    assert metadata.dspy_version == dspy.__version__
    assert (metadata.pinned, metadata.parent_version) == (False, None)
    assert json.loads(metadata.model_dump_json()) == metadata.model_dump()


def test_first_registration_stores_the_untrained_program(
    manager: ProgramManager, storage: FileSystemStorageAdapter
) -> None:
    manager.register_program(Predictor)
    stored = storage.load("predictor")
    assert stored.version == "1.0.0"
    assert stored.state == dspy.Predict(Predictor).dump_state()
    assert stored.manifest["program_class"] == "llm_server.models.predictor.Predictor"
    assert stored.manifest["signature_fields"] == {
        "self": {"inputs": ["input"], "outputs": ["output"]}
    }


def test_name_defaults_to_the_class_name(manager: ProgramManager) -> None:
    assert manager.register_program(Predictor).name == "Predictor"


@pytest.mark.parametrize(
    ("program_class", "program_id"), [(Predictor, "predictor"), (TextSummarizer, "text_summarizer")]
)
def test_id_is_derived_from_the_class(
    manager: ProgramManager, program_class: type, program_id: str
) -> None:
    assert manager.register_program(program_class).id == program_id
    assert program_id in manager.registry


def test_the_id_can_be_given(manager: ProgramManager) -> None:
    assert manager.register_program(Predictor, program_id="chat-v2").id == "chat-v2"
    with pytest.raises(InvalidIdentifierError):
        manager.register_program(Predictor, program_id="../escape")


def test_registering_the_same_class_again_is_idempotent(
    manager: ProgramManager, storage: FileSystemStorageAdapter
) -> None:
    first = manager.register_program(Predictor, name="Text Completion")
    again = manager.register_program(Predictor, name="Text Completion")
    assert again == first
    assert storage.list_versions("predictor") == ["1.0.0"]
    assert len(manager.registry) == 1


def test_two_different_classes_under_one_id_conflict(manager: ProgramManager) -> None:
    manager.register_program(Predictor)

    class Predictor2(dspy.Signature):
        """Another program."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    with pytest.raises(ProgramAlreadyRegisteredError, match="predictor"):
        manager.register_program(Predictor2, program_id="predictor")
    assert manager.registry.get_program_class("predictor") is Predictor


@pytest.mark.parametrize("not_a_program", [dict, object(), "Predictor", dspy.Predict(Predictor)])
def test_only_signatures_and_modules_can_be_registered(
    manager: ProgramManager, not_a_program: Any
) -> None:
    with pytest.raises(ProgramError, match=r"dspy\.Signature or dspy\.Module"):
        manager.register_program(not_a_program)


def test_a_module_that_needs_arguments_is_refused(manager: ProgramManager) -> None:
    with pytest.raises(ProgramError, match="without arguments"):
        manager.register_program(NeedsArguments)


def test_unknown_program_ids(manager: ProgramManager) -> None:
    with pytest.raises(ProgramNotFoundError, match="registered: \\(none\\)"):
        manager.registry.get_program_metadata("predictor")
    with pytest.raises(ProgramNotFoundError):
        manager.get_program("predictor")
    with pytest.raises(ProgramNotFoundError):
        manager.save_program_version("predictor", dspy.Predict(Predictor))


# --- model manager pass-through ----------------------------------------------------------------


def test_model_manager_and_model_info_pass_through(manager: ProgramManager) -> None:
    assert isinstance(manager.model_manager, ModelManagerLike)
    assert manager.model_info is manager.model_manager.model_info
    info = manager.model_info.get("m")
    assert info is not None
    assert info.model_dump(by_alias=True) == {"id": "m", "provider": "openai"}


def test_reliable_backend_runs_the_served_version(manager: ProgramManager) -> None:
    manager.register_program(Predictor)
    optimized = _with_demos(manager.get_program("predictor"), ("q", "a"))
    manager.save_program_version("predictor", optimized)
    assert manager.reliable_backend("predictor", "m") == ("composed backend", "m")
    stand_in = manager.model_manager
    assert isinstance(stand_in, StandInModelManager)
    program, model_id, metadata = stand_in.backends[-1]
    assert (model_id, program.demos) == ("m", [{"input": "q", "output": "a"}])
    assert metadata == manager.registry.get_program_metadata("predictor")
    assert metadata.version == "1.1.0"


def test_reliable_backend_can_run_a_pinned_version(storage: FileSystemStorageAdapter) -> None:
    models = StandInModelManager()
    manager = ProgramManager(model_manager=models, storage_adapter=storage)
    manager.register_program(Predictor)
    manager.save_program_version("predictor", _with_demos(dspy.Predict(Predictor), ("q", "a")))
    assert manager.reliable_backend("predictor", "m", version="1.0.0") == ("composed backend", "m")
    program, _, metadata = models.backends[-1]
    assert (program.demos, metadata.version) == ([], "1.0.0")


def test_the_old_backend_names_still_work_and_warn(manager: ProgramManager) -> None:
    manager.register_program(Predictor)
    with pytest.warns(DeprecationWarning, match="ProgramManager.reliable_backend"):
        assert manager.create_backend("predictor", "m") == ("composed backend", "m")


# --- versions and lineage ------------------------------------------------------------------------


def test_saving_records_lineage(manager: ProgramManager, storage: FileSystemStorageAdapter) -> None:
    manager.register_program(Predictor, name="Text Completion")
    program = _with_demos(dspy.Predict(Predictor), ("2+2", "4"))
    trainset = [dspy.Example(input="2+2", output="4").with_inputs("input")]
    saved = manager.save_program_version(
        "predictor",
        program,
        optimizer="LabeledFewShot",
        optimizer_settings={"k": 1},
        score=0.75,
        trainset=trainset,
        notes="first optimization",
    )
    assert saved.model_dump() == {"id": "predictor", "version": "1.1.0", "name": "Text Completion"}
    assert (saved.parent_version, saved.optimizer, saved.optimizer_settings) == (
        "1.0.0",
        "LabeledFewShot",
        {"k": 1},
    )
    assert (saved.score, saved.notes, saved.created_at) == (
        0.75,
        "first optimization",
        "2025-08-01T10:30:00.123456Z",
    )
    assert saved.trainset_sha256 == hash_trainset([{"input": "2+2", "output": "4"}])
    assert saved.content_sha256 == sha256_hex(canonical_json(program.dump_state()))
    manifest = storage.load("predictor", "1.1.0").manifest
    assert manifest["trainset_size"] == 1
    assert manifest["dspy_version"] == dspy.__version__
    assert manifest["state_sha256"] == saved.content_sha256


def test_trainset_hash_depends_on_content_and_order_only() -> None:
    a = dspy.Example(input="x", output="1").with_inputs("input")
    b = dspy.Example(output="2", input="y")
    assert hash_trainset([a, b]) == hash_trainset([{"output": "1", "input": "x"}, b])
    assert hash_trainset([a, b]) != hash_trainset([b, a])
    assert hash_trainset([a]) != hash_trainset([dspy.Example(input="x", output="2")])


def test_unpinned_programs_serve_the_newest_saved_version(manager: ProgramManager) -> None:
    manager.register_program(Predictor)
    manager.save_program_version("predictor", _with_demos(dspy.Predict(Predictor), ("a", "1")))
    second = manager.save_program_version(
        "predictor", _with_demos(dspy.Predict(Predictor), ("b", "2"))
    )
    assert second.parent_version == "1.1.0"  # the default parent is the served version
    assert manager.registry.get_program_metadata("predictor").version == "1.2.0"
    assert manager.get_program("predictor").demos == [{"input": "b", "output": "2"}]
    assert manager.list_versions("predictor") == ["1.0.0", "1.1.0", "1.2.0"]


def test_a_pinned_version_is_served_while_newer_ones_exist(
    storage: FileSystemStorageAdapter,
) -> None:
    trainer = _manager(storage)
    trainer.register_program(Predictor)
    trainer.save_program_version("predictor", _with_demos(dspy.Predict(Predictor), ("a", "1")))

    host = _manager(storage)
    served = host.register_program(Predictor, version="1.0.0")
    assert (served.version, served.pinned) == ("1.0.0", True)
    host.save_program_version("predictor", _with_demos(dspy.Predict(Predictor), ("b", "2")))
    assert host.registry.get_program_metadata("predictor").version == "1.0.0"
    assert host.get_program("predictor").demos == []
    assert host.get_program("predictor", LATEST).demos == [{"input": "b", "output": "2"}]
    assert host.get_program("predictor", "1.1.0").demos == [{"input": "a", "output": "1"}]
    assert host.get_version_metadata("predictor", LATEST).version == "1.2.0"


def test_pinning_on_empty_storage_and_pinning_a_missing_version(manager: ProgramManager) -> None:
    assert manager.register_program(Predictor, version="1.0.0").version == "1.0.0"
    with pytest.raises(ProgramNotFoundError, match=r"3\.0\.0"):
        manager.register_program(Predictor, version="3.0.0")
    with pytest.raises(InvalidIdentifierError):
        manager.register_program(Predictor, version="../1.0.0")


def test_a_restarted_host_serves_the_latest_stored_version(
    storage: FileSystemStorageAdapter,
) -> None:
    first = _manager(storage)
    first.register_program(TextSummarizer)
    program = TextSummarizer()
    program.polish.demos = [dspy.Example(summary="s", final="f")]
    first.save_program_version("text_summarizer", program, score=0.9)

    restarted = _manager(storage)
    metadata = restarted.register_program(TextSummarizer)
    assert (metadata.version, metadata.score) == ("1.1.0", 0.9)
    assert restarted.get_program("text_summarizer").dump_state() == program.dump_state()


@pytest.mark.parametrize(
    "make_program",
    [
        lambda: _with_demos(dspy.Predict(Predictor), ("hello", "world"), ("2+2", "4")),
        lambda: _with_demos(TextSummarizer(), ("unused", "unused")),
    ],
    ids=["predict", "module"],
)
def test_programs_with_demos_round_trip(
    storage: FileSystemStorageAdapter, make_program: Any
) -> None:
    program = make_program()
    if isinstance(program, TextSummarizer):
        program.draft.predict.demos = [
            dspy.Example(text="long text", reasoning="because", summary="short").with_inputs("text")
        ]
        program.polish.signature = program.polish.signature.with_instructions("Polish it.")
        program_class: type = TextSummarizer
    else:
        program.signature = program.signature.with_instructions("Answer briefly.")
        program_class = Predictor
    manager = _manager(storage)
    program_id = manager.register_program(program_class).id
    version = manager.save_program_version(program_id, program).version
    fresh = _manager(storage)
    fresh.register_program(program_class)
    loaded = fresh.get_program(program_id, version)
    assert loaded.dump_state() == program.dump_state()
    assert loaded.dump_state() != make_program().dump_state() or program_class is Predictor


def test_each_get_returns_an_independent_instance(manager: ProgramManager) -> None:
    manager.register_program(Predictor)
    manager.save_program_version("predictor", _with_demos(dspy.Predict(Predictor), ("a", "1")))
    first = manager.get_program("predictor")
    first.demos.append({"input": "mutated", "output": "!"})
    assert manager.get_program("predictor").demos == [{"input": "a", "output": "1"}]


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (TextSummarizer(), "expects an instance of dspy.Predict"),
        (dspy.Predict("question -> answer"), "expects an instance of dspy.Predict"),
    ],
)
def test_saving_a_program_of_another_class_is_refused(
    manager: ProgramManager, program: Any, message: str
) -> None:
    manager.register_program(Predictor)
    with pytest.raises(ProgramError, match=message):
        manager.save_program_version("predictor", program)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"parent_version": "9.9.9"}, ProgramNotFoundError),
        ({"parent_version": "../x"}, InvalidIdentifierError),
        ({"score": float("nan")}, ProgramError),
        ({"optimizer_settings": {"metric": object()}}, ProgramError),
        ({"trainset": [object()]}, ProgramError),
    ],
)
def test_bad_lineage_is_refused_and_nothing_is_stored(
    manager: ProgramManager, storage: FileSystemStorageAdapter, kwargs: Any, error: type
) -> None:
    manager.register_program(Predictor)
    with pytest.raises(error):
        manager.save_program_version("predictor", dspy.Predict(Predictor), **kwargs)
    assert storage.list_versions("predictor") == ["1.0.0"]


# --- loading checks that the state belongs to the class ------------------------------------


def test_stored_state_of_another_class_is_refused_naming_the_manifest(
    storage: FileSystemStorageAdapter,
) -> None:
    _manager(storage).register_program(TextSummarizer, program_id="shared")
    with pytest.raises(CorruptProgramError) as caught:
        _manager(storage).register_program(Predictor, program_id="shared")
    assert str(storage.base_dir / "shared" / "1.0.0" / "manifest.json") in str(caught.value)
    assert "TextSummarizer" in str(caught.value)


def test_changed_signature_fields_are_refused(storage: FileSystemStorageAdapter) -> None:
    _manager(storage).register_program(Predictor)

    class Changed(dspy.Signature):
        """Same class path, other fields (as after an incompatible code change)."""

        question: str = dspy.InputField()
        output: str = dspy.OutputField()

    Changed.__module__, Changed.__qualname__ = Predictor.__module__, Predictor.__qualname__
    with pytest.raises(CorruptProgramError, match="signature fields"):
        _manager(storage).register_program(Changed, program_id="predictor")


def _rewrite_state(storage: FileSystemStorageAdapter, version: str, state: dict[str, Any]) -> None:
    """Replace a version's state and fix both hashes, as a careful attacker would."""
    folder = storage.base_dir / "predictor" / version
    raw = canonical_json(state)
    (folder / "state.json").write_bytes(raw)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["state_sha256"] = manifest["content_sha256"] = sha256_hex(raw)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: {**s, "forward": "replaced"},  # load_state would setattr any key
        lambda s: {k: v for k, v in s.items() if k != "signature"},
        lambda s: {**s, "signature": "not an object"},
    ],
)
def test_state_with_the_wrong_shape_is_refused(
    storage: FileSystemStorageAdapter, edit: Any
) -> None:
    _manager(storage).register_program(Predictor)
    _rewrite_state(storage, "1.0.0", edit(storage.load("predictor").state))
    with pytest.raises(CorruptProgramError, match=r"manifest\.json"):
        _manager(storage).register_program(Predictor)


def test_content_hash_is_checked_independently_of_the_adapter(manager: ProgramManager) -> None:
    class MemoryStorage:
        def __init__(self) -> None:
            self.versions: dict[str, StoredProgram] = {}

        def save(
            self, program_id: str, state: Mapping[str, Any], manifest: Mapping[str, Any]
        ) -> StoredProgram:
            version = f"1.{len(self.versions)}.0"
            tampered = {**state, "demos": [{"input": "evil", "output": "x"}]}
            self.versions[version] = StoredProgram(program_id, version, tampered, manifest)
            return self.versions[version]

        def load(self, program_id: str, version: str | None = None) -> StoredProgram:
            return self.versions[version or max(self.versions)]

        def list_versions(self, program_id: str) -> list[str]:
            return sorted(self.versions)

    with pytest.raises(CorruptProgramError, match="content sha256"):
        _manager(MemoryStorage()).register_program(Predictor)


# --- async -------------------------------------------------------------------------------------


class ThreadRecordingStorage(FileSystemStorageAdapter):
    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.threads: set[int] = set()

    def load(self, program_id: str, version: str | None = None) -> StoredProgram:
        self.threads.add(threading.get_ident())
        return super().load(program_id, version)

    def save(self, program_id: str, state: Any, manifest: Any, **kw: Any) -> StoredProgram:
        self.threads.add(threading.get_ident())
        return super().save(program_id, state, manifest, **kw)


@pytest.mark.anyio
async def test_async_wrappers_do_storage_io_off_the_event_loop(tmp_path: Path) -> None:
    storage = ThreadRecordingStorage(tmp_path)
    manager = _manager(storage)
    manager.register_program(Predictor)
    storage.threads.clear()
    saved = await manager.asave_program_version(
        "predictor", _with_demos(dspy.Predict(Predictor), ("a", "1")), optimizer="Manual"
    )
    assert (saved.version, saved.optimizer) == ("1.1.0", "Manual")
    assert await manager.alist_versions("predictor") == ["1.0.0", "1.1.0"]
    program = await manager.aget_program("predictor", "1.0.0")
    assert program.demos == []
    assert storage.threads
    assert threading.get_ident() not in storage.threads


@pytest.mark.anyio
async def test_concurrent_saves_leave_the_newest_version_served(manager: ProgramManager) -> None:
    import anyio

    manager.register_program(Predictor)
    async with anyio.create_task_group() as tg:
        for i in range(12):
            program = _with_demos(dspy.Predict(Predictor), (f"q{i}", f"a{i}"))
            tg.start_soon(manager.asave_program_version, "predictor", program)
    versions = await manager.alist_versions("predictor")
    assert len(versions) == 13
    assert manager.registry.get_program_metadata("predictor").version == versions[-1]


def test_importing_the_program_manager_does_not_import_dspy() -> None:
    code = (
        "import sys, llm_server.models.program_manager, llm_server._fs_storage;"
        "print(sorted(m for m in ('dspy', 'litellm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_program_metadata_is_frozen() -> None:
    metadata = ProgramMetadata(id="p", version="1.0.0", name="P")
    with pytest.raises(ValueError, match="frozen"):
        metadata.version = "2.0.0"  # type: ignore[misc]


def test_a_local_rollback_after_three_releases_returns_to_the_previous_one_each_time(
    manager: ProgramManager,
) -> None:
    manager.register_program(Summarize)
    b = manager.save_program_version("summarize", _with_demos(dspy.Predict(Summarize), ("b", "b")))
    c = manager.save_program_version("summarize", _with_demos(dspy.Predict(Summarize), ("c", "c")))
    manager.register_program(Summarize, version="1.0.0")  # serve A = 1.0.0 again
    manager.promote("summarize", b.version)  # records A (served before), then B
    manager.promote("summarize", c.version)
    assert manager.rollback("summarize").version == b.version
    assert manager.registry.get_program_metadata("summarize").version == b.version
    assert manager.rollback("summarize").version == "1.0.0"
    with pytest.raises(ProgramError, match="nothing to roll back to"):
        manager.rollback("summarize")
    assert [r["version"] for r in manager.releases("summarize")] == [
        "1.0.0",
        b.version,
        c.version,
        b.version,
        "1.0.0",
    ]
