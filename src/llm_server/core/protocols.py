"""The seams of the framework: small protocols users implement or plug in.

All protocols are ``runtime_checkable``, so a class that merely has the right shape is
accepted; subclassing them explicitly (as the example apps do) works too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.types import MediaType, PipelineData

if TYPE_CHECKING:
    from llm_server.core.model_config import ModelsConfig

__all__ = [
    "ConfigProvider",
    "ModelBackend",
    "PipelineStep",
    "StorageAdapter",
    "StoredProgram",
    "TypedPipelineStep",
]


@runtime_checkable
class PipelineStep(Protocol):
    """One step of a :class:`~llm_server.core.pipeline.Pipeline`.

    A step may also declare ``output_media_type`` (see :class:`TypedPipelineStep`); the
    pipeline then checks, when it is built, that the next step accepts it.
    """

    @property
    def accepted_media_types(self) -> Sequence[MediaType]:
        """The media types :meth:`process` accepts."""
        ...

    async def process(self, data: PipelineData) -> PipelineData:
        """Turn ``data`` into new data; never mutate the input."""
        ...


@runtime_checkable
class TypedPipelineStep(PipelineStep, Protocol):
    """A step that also declares the media type it produces."""

    @property
    def output_media_type(self) -> MediaType:
        """The media type of the data :meth:`process` returns."""
        ...


@runtime_checkable
class ModelBackend(Protocol):
    """Something that answers model calls.

    Attributes:
        model_id: The configured model id.
        program_metadata: The program block of the envelope, when bound to a program.
        last_prompt_tokens: Prompt tokens of this backend's most recent call (informational;
            shared across concurrent requests, so use :attr:`ModelOutput.usage` per request).
        last_completion_tokens: Completion tokens of the most recent call (same caveat).
    """

    model_id: str
    program_metadata: Any
    last_prompt_tokens: int | None
    last_completion_tokens: int | None

    async def predict(self, input: Any) -> ModelOutput:
        """Run one model call."""
        ...

    def get_lm_history(self) -> list[Any]:
        """Return the model interaction history this backend keeps (may be empty)."""
        ...


@runtime_checkable
class ConfigProvider(Protocol):
    """Supplies the validated model configuration."""

    def load(self) -> ModelsConfig:
        """Load and validate the configuration; raise ``ConfigurationError`` when invalid."""
        ...


@dataclass(frozen=True, slots=True)
class StoredProgram:
    """One immutable stored version of a program.

    Attributes:
        program_id: The program's id.
        version: The version's name.
        state: The program's DSPy JSON state (``module.dump_state()``).
        manifest: Lineage and integrity metadata written with the state.
    """

    program_id: str
    version: str
    state: Mapping[str, Any]
    manifest: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class StorageAdapter(Protocol):
    """Stores immutable program versions."""

    def save(
        self, program_id: str, state: Mapping[str, Any], manifest: Mapping[str, Any]
    ) -> StoredProgram:
        """Store a new version and return it (with its assigned version name)."""
        ...

    def load(self, program_id: str, version: str | None = None) -> StoredProgram:
        """Load a pinned version, or the latest when ``version`` is ``None``."""
        ...

    def list_versions(self, program_id: str) -> list[str]:
        """Return the program's versions, oldest first."""
        ...
