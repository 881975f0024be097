"""Core data types that flow through pipelines.

How data and metadata flow
--------------------------
A pipeline hands each step a :class:`PipelineData` and takes the :class:`PipelineData` the step
returns to the next step. Values are immutable: a step never changes its input, it returns new
data. Metadata is *not* merged by the pipeline; each step decides what to carry forward. The
convention, followed by every built-in step, is to keep what came in and add its own keys::

    return data.evolve(content=new_content, metadata={"original_length": n})

:meth:`PipelineData.evolve` copies the incoming metadata and overlays the given keys, so a
later step sees everything earlier steps recorded unless a step deliberately drops it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

__all__ = ["MediaType", "PipelineData"]


class MediaType(StrEnum):
    """The kind of content a :class:`PipelineData` carries."""

    TEXT = "text"
    """A ``str``."""
    IMAGE = "image"
    """Image bytes, base64 text, a data URL, a PIL image, or a processed image value."""
    STRUCTURED = "structured"
    """JSON-compatible data (dicts, lists, scalars) or a pydantic model."""


@dataclass(frozen=True, slots=True)
class PipelineData:
    """One value flowing through a pipeline.

    Attributes:
        media_type: What ``content`` is.
        content: The payload.
        metadata: Facts recorded by earlier steps (see the module docstring).
    """

    media_type: MediaType
    content: Any
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def evolve(
        self,
        *,
        content: Any = ...,
        media_type: MediaType | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> PipelineData:
        """Return new data with the given fields replaced and ``metadata`` merged in.

        Args:
            content: The new content (unchanged when omitted).
            media_type: The new media type (unchanged when omitted).
            metadata: Keys to add to (or overwrite in) a copy of the current metadata.
        """
        changes = {
            "content": self.content if content is ... else content,
            "media_type": self.media_type if media_type is None else media_type,
            "metadata": {**self.metadata, **(metadata or {})},
        }
        if type(self) is PipelineData:  # called per step: skip replace()'s field walk
            return PipelineData(**changes)
        return replace(self, **changes)
