"""The standard pipeline steps.

- :class:`ModelProcessor` and :class:`DefaultOutputProcessor`: call a model.
- :class:`ImageProcessor`: resize, convert and sanitise images before a vision model.
- :class:`StructuredValidator`: validate structured data against a pydantic model.
"""

from __future__ import annotations

from llm_server.core.images import ImageProcessor, ProcessedImage
from llm_server.core.model_processor import (
    DefaultOutputProcessor,
    ModelProcessor,
    OutputProcessor,
)
from llm_server.core.structured import StructuredValidator

__all__ = [
    "DefaultOutputProcessor",
    "ImageProcessor",
    "ModelProcessor",
    "OutputProcessor",
    "ProcessedImage",
    "StructuredValidator",
]
