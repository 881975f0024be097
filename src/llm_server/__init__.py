"""llm-server: build DSPy-powered LLM services on FastAPI.

The names a service needs are re-exported here and loaded lazily, so ``import llm_server``
stays light (it imports neither DSPy nor LiteLLM). Each name has one documented home, the
module it is imported from below; every other public name lives only in its home.

The ``if TYPE_CHECKING:`` block at the end is the one list of re-exports: type checkers read
it, and at import time this module reads the same lines from its own source to build the lazy
map and ``__all__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _read_exports() -> dict[str, str]:
    """Public name -> home module, from the ``if TYPE_CHECKING:`` block of this file."""
    loader = __spec__.loader if __spec__ is not None else None
    source = loader.get_source(__name__) if loader is not None else None  # type: ignore[attr-defined]
    if source is None:  # pragma: no cover - only a bytecode-only install lacks the source
        raise ImportError("llm_server needs its __init__.py source to list its exports")
    exports: dict[str, str] = {}
    block = source[source.index("\nif TYPE_CHECKING:\n") :]
    for line in block.splitlines()[2:]:
        words = line.split()
        if len(words) != 6 or words[0] != "from" or words[2] != "import" or words[4] != "as":
            break
        exports[words[5]] = words[1]
    return exports


_EXPORTS = _read_exports()
__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - built from the TYPE_CHECKING block below


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]


# The one list of re-exports: one `from <home> import <Name> as <Name>` per line, nothing else.
if TYPE_CHECKING:
    from llm_server.core.circuit_breaker import CircuitBreaker as CircuitBreaker
    from llm_server.core.config import FrameworkSettings as FrameworkSettings
    from llm_server.core.errors import LLMServerError as LLMServerError
    from llm_server.core.implementations import DefaultOutputProcessor as DefaultOutputProcessor
    from llm_server.core.implementations import ImageProcessor as ImageProcessor
    from llm_server.core.implementations import ModelProcessor as ModelProcessor
    from llm_server.core.implementations import StructuredValidator as StructuredValidator
    from llm_server.core.metadata import MetadataCollector as MetadataCollector
    from llm_server.core.metrics_wrappers import ModelBackendTracker as ModelBackendTracker
    from llm_server.core.metrics_wrappers import PerformanceMetrics as PerformanceMetrics
    from llm_server.core.model_interfaces import ModelOutput as ModelOutput
    from llm_server.core.model_interfaces import TokenUsage as TokenUsage
    from llm_server.core.opentelemetry_integration import Telemetry as Telemetry
    from llm_server.core.pipeline import Pipeline as Pipeline
    from llm_server.core.protocols import ModelBackend as ModelBackend
    from llm_server.core.protocols import PipelineStep as PipelineStep
    from llm_server.core.telemetry import RequestObserver as RequestObserver
    from llm_server.core.telemetry import configure_json_logging as configure_json_logging
    from llm_server.core.telemetry import log_context as log_context
    from llm_server.core.types import MediaType as MediaType
    from llm_server.core.types import PipelineData as PipelineData
    from llm_server.defaults import FileSystemStorageAdapter as FileSystemStorageAdapter
    from llm_server.defaults import YamlConfigProvider as YamlConfigProvider
    from llm_server.models.manager import ModelManager as ModelManager
    from llm_server.models.predictor import Predictor as Predictor
    from llm_server.models.program_manager import ProgramManager as ProgramManager
