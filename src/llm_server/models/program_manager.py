"""DSPy program registration, versioning and optimization tracking.

A host registers its programs once at startup::

    program_manager = ProgramManager(model_manager=model_manager, storage_adapter=storage)
    program_manager.register_program(program_class=Predictor, name="Text Completion")

Each program has an id derived from its class (``Predictor`` -> ``predictor``) and is served
at one version. Versions are immutable snapshots of the program's DSPy JSON state kept by the
storage adapter, each with a manifest recording its lineage. On first registration, when the
storage holds no version of the program yet, the untrained program is saved as the first
version (``1.0.0`` with :class:`~llm_server.defaults.FileSystemStorageAdapter`), so every
version a host serves is on disk and every optimized version has a parent.

After an optimizer ran, :meth:`ProgramManager.save_program_version` stores the result as a
new version. A program registered without ``version=`` follows the versions saved through
its manager; one registered with ``version="1.0.0"`` keeps serving that version while newer
ones exist.
"""

from llm_server.programs._manager import LATEST, ModelManagerLike, ProgramManager
from llm_server.programs._registry import ProgramMetadata, ProgramRegistry
from llm_server.programs._releases import ReleasingStorage

__all__ = [
    "LATEST",
    "ModelManagerLike",
    "ProgramManager",
    "ProgramMetadata",
    "ProgramRegistry",
    "ReleasingStorage",
]
