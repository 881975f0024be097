"""llm-server: build DSPy-powered LLM services on FastAPI.

The common names are re-exported here and loaded lazily, so ``import llm_server`` stays light
(it imports neither DSPy nor LiteLLM). Every name is also importable from the module path the
reference design shows (``llm_server.core.*``, ``llm_server.models.*``, ``llm_server.defaults``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ModelPrice": "llm_server.core.pricing",
    "BackendWrapper": "llm_server.core.backend_wrapper",
    "BreakerListener": "llm_server.core.circuit_breaker",
    "BreakerSnapshot": "llm_server.core.circuit_breaker",
    "BreakerState": "llm_server.core.circuit_breaker",
    "BreakerStateStore": "llm_server.core.circuit_breaker",
    "CallOutcome": "llm_server.core.circuit_breaker",
    "CircuitBreaker": "llm_server.core.circuit_breaker",
    "CircuitBreakerBackend": "llm_server.core.reliability",
    "Clock": "llm_server.core.clock",
    "ConfigProvider": "llm_server.core.protocols",
    "DSPyBackend": "llm_server.models.dspy_backend",
    "DeadlineBackend": "llm_server.core.reliability",
    "DefaultOutputProcessor": "llm_server.core.implementations",
    "FallbackBackend": "llm_server.core.reliability",
    "FileSystemStorageAdapter": "llm_server.defaults",
    "FrameworkSettings": "llm_server.core.config",
    "ImageProcessor": "llm_server.core.implementations",
    "InMemoryBreakerStore": "llm_server.core.circuit_breaker",
    "InstrumentedBackend": "llm_server.core.opentelemetry_integration",
    "MediaType": "llm_server.core.types",
    "MetadataCollector": "llm_server.core.metadata",
    "ModelBackend": "llm_server.core.protocols",
    "ModelBackendTracker": "llm_server.core.metrics_wrappers",
    "ModelCallInfo": "llm_server.core.opentelemetry_integration",
    "ModelConfig": "llm_server.core.model_config",
    "ModelInfo": "llm_server.models.manager",
    "ModelManager": "llm_server.models.manager",
    "ModelOutput": "llm_server.core.model_interfaces",
    "ModelProcessor": "llm_server.core.implementations",
    "ModelsConfig": "llm_server.core.model_config",
    "OutputProcessor": "llm_server.core.implementations",
    "PerformanceMetrics": "llm_server.core.metrics_wrappers",
    "Pipeline": "llm_server.core.pipeline",
    "PipelineData": "llm_server.core.types",
    "PipelineStep": "llm_server.core.protocols",
    "Predictor": "llm_server.models.predictor",
    "ProcessedImage": "llm_server.core.images",
    "ProgramManager": "llm_server.models.program_manager",
    "ProgramMetadata": "llm_server.models.program_manager",
    "ProgramRegistry": "llm_server.models.program_manager",
    "ReliabilityListener": "llm_server.core.reliability",
    "ReliableModel": "llm_server.core.reliability",
    "RetryPolicy": "llm_server.core.retry",
    "RetryingBackend": "llm_server.core.reliability",
    "StorageAdapter": "llm_server.core.protocols",
    "StoredProgram": "llm_server.core.protocols",
    "StructuredValidator": "llm_server.core.implementations",
    "Telemetry": "llm_server.core.opentelemetry_integration",
    "TelemetryListener": "llm_server.core.opentelemetry_integration",
    "TokenCountMethod": "llm_server.core.model_interfaces",
    "TokenUsage": "llm_server.core.model_interfaces",
    "YamlConfigProvider": "llm_server.defaults",
    "build_reliable_backend": "llm_server.core.reliability",
    "configure_json_logging": "llm_server.core.logging",
    "count_message_tokens": "llm_server.core.tokens",
    "count_text_tokens": "llm_server.core.tokens",
    "current_trace_id": "llm_server.core.opentelemetry_integration",
    "get_telemetry": "llm_server.core.opentelemetry_integration",
    "log_context": "llm_server.core.logging",
    "redact": "llm_server.core.redaction",
    "register_secret": "llm_server.core.redaction",
    "set_telemetry": "llm_server.core.opentelemetry_integration",
    "validate_structured": "llm_server.core.structured",
}
_EXPORTS.update(
    dict.fromkeys(
        importlib.import_module("llm_server.core.errors").__all__, "llm_server.core.errors"
    )
)

__all__ = [  # sorted; tests/test_public_api.py keeps it equal to _EXPORTS
    "BackendWrapper",
    "BreakerListener",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStateStore",
    "CallOutcome",
    "CircuitBreaker",
    "CircuitBreakerBackend",
    "CircuitOpenError",
    "Clock",
    "ConfigProvider",
    "ConfigurationError",
    "ContextWindowExceededError",
    "CorruptProgramError",
    "DSPyBackend",
    "DataValidationError",
    "DeadlineBackend",
    "DeadlineExceededError",
    "DefaultOutputProcessor",
    "FallbackBackend",
    "FileSystemStorageAdapter",
    "FrameworkSettings",
    "ImageProcessor",
    "InMemoryBreakerStore",
    "InputError",
    "InstrumentedBackend",
    "InvalidIdentifierError",
    "LLMServerError",
    "MediaType",
    "MediaTypeMismatchError",
    "MetadataCollector",
    "MissingAPIKeyError",
    "ModelBackend",
    "ModelBackendTracker",
    "ModelCallError",
    "ModelCallInfo",
    "ModelConfig",
    "ModelInfo",
    "ModelManager",
    "ModelNotFoundError",
    "ModelOutput",
    "ModelPrice",
    "ModelProcessor",
    "ModelTimeoutError",
    "ModelsConfig",
    "OutputParseError",
    "OutputProcessor",
    "PayloadTooLargeError",
    "PerformanceMetrics",
    "Pipeline",
    "PipelineData",
    "PipelineError",
    "PipelineStep",
    "PipelineValidationError",
    "Predictor",
    "ProcessedImage",
    "ProgramAlreadyRegisteredError",
    "ProgramError",
    "ProgramManager",
    "ProgramMetadata",
    "ProgramNotFoundError",
    "ProgramRegistry",
    "ProviderAuthError",
    "ProviderBadRequestError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "ReliabilityListener",
    "ReliableModel",
    "RetryPolicy",
    "RetryingBackend",
    "StepError",
    "StorageAdapter",
    "StorageError",
    "StoredProgram",
    "StructuredValidator",
    "Telemetry",
    "TelemetryListener",
    "TokenCountMethod",
    "TokenUsage",
    "UndecodableInputError",
    "UnsupportedMediaError",
    "VersionExistsError",
    "YamlConfigProvider",
    "build_reliable_backend",
    "configure_json_logging",
    "count_message_tokens",
    "count_text_tokens",
    "current_trace_id",
    "get_telemetry",
    "log_context",
    "redact",
    "register_secret",
    "set_telemetry",
    "validate_structured",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from llm_server.core.backend_wrapper import BackendWrapper as BackendWrapper
    from llm_server.core.circuit_breaker import BreakerListener as BreakerListener
    from llm_server.core.circuit_breaker import BreakerSnapshot as BreakerSnapshot
    from llm_server.core.circuit_breaker import BreakerState as BreakerState
    from llm_server.core.circuit_breaker import BreakerStateStore as BreakerStateStore
    from llm_server.core.circuit_breaker import CallOutcome as CallOutcome
    from llm_server.core.circuit_breaker import CircuitBreaker as CircuitBreaker
    from llm_server.core.circuit_breaker import InMemoryBreakerStore as InMemoryBreakerStore
    from llm_server.core.clock import Clock as Clock
    from llm_server.core.config import FrameworkSettings as FrameworkSettings
    from llm_server.core.errors import CircuitOpenError as CircuitOpenError
    from llm_server.core.errors import ConfigurationError as ConfigurationError
    from llm_server.core.errors import ContextWindowExceededError as ContextWindowExceededError
    from llm_server.core.errors import CorruptProgramError as CorruptProgramError
    from llm_server.core.errors import DataValidationError as DataValidationError
    from llm_server.core.errors import DeadlineExceededError as DeadlineExceededError
    from llm_server.core.errors import InputError as InputError
    from llm_server.core.errors import InvalidIdentifierError as InvalidIdentifierError
    from llm_server.core.errors import LLMServerError as LLMServerError
    from llm_server.core.errors import MediaTypeMismatchError as MediaTypeMismatchError
    from llm_server.core.errors import MissingAPIKeyError as MissingAPIKeyError
    from llm_server.core.errors import ModelCallError as ModelCallError
    from llm_server.core.errors import ModelNotFoundError as ModelNotFoundError
    from llm_server.core.errors import ModelTimeoutError as ModelTimeoutError
    from llm_server.core.errors import OutputParseError as OutputParseError
    from llm_server.core.errors import PayloadTooLargeError as PayloadTooLargeError
    from llm_server.core.errors import PipelineError as PipelineError
    from llm_server.core.errors import PipelineValidationError as PipelineValidationError
    from llm_server.core.errors import (
        ProgramAlreadyRegisteredError as ProgramAlreadyRegisteredError,
    )
    from llm_server.core.errors import ProgramError as ProgramError
    from llm_server.core.errors import ProgramNotFoundError as ProgramNotFoundError
    from llm_server.core.errors import ProviderAuthError as ProviderAuthError
    from llm_server.core.errors import ProviderBadRequestError as ProviderBadRequestError
    from llm_server.core.errors import ProviderUnavailableError as ProviderUnavailableError
    from llm_server.core.errors import RateLimitedError as RateLimitedError
    from llm_server.core.errors import StepError as StepError
    from llm_server.core.errors import StorageError as StorageError
    from llm_server.core.errors import UndecodableInputError as UndecodableInputError
    from llm_server.core.errors import UnsupportedMediaError as UnsupportedMediaError
    from llm_server.core.errors import VersionExistsError as VersionExistsError
    from llm_server.core.images import ProcessedImage as ProcessedImage
    from llm_server.core.implementations import DefaultOutputProcessor as DefaultOutputProcessor
    from llm_server.core.implementations import ImageProcessor as ImageProcessor
    from llm_server.core.implementations import ModelProcessor as ModelProcessor
    from llm_server.core.implementations import OutputProcessor as OutputProcessor
    from llm_server.core.implementations import StructuredValidator as StructuredValidator
    from llm_server.core.logging import configure_json_logging as configure_json_logging
    from llm_server.core.logging import log_context as log_context
    from llm_server.core.metadata import MetadataCollector as MetadataCollector
    from llm_server.core.metrics_wrappers import ModelBackendTracker as ModelBackendTracker
    from llm_server.core.metrics_wrappers import PerformanceMetrics as PerformanceMetrics
    from llm_server.core.model_config import ModelConfig as ModelConfig
    from llm_server.core.model_config import ModelsConfig as ModelsConfig
    from llm_server.core.model_interfaces import ModelOutput as ModelOutput
    from llm_server.core.model_interfaces import TokenCountMethod as TokenCountMethod
    from llm_server.core.model_interfaces import TokenUsage as TokenUsage
    from llm_server.core.opentelemetry_integration import InstrumentedBackend as InstrumentedBackend
    from llm_server.core.opentelemetry_integration import ModelCallInfo as ModelCallInfo
    from llm_server.core.opentelemetry_integration import Telemetry as Telemetry
    from llm_server.core.opentelemetry_integration import TelemetryListener as TelemetryListener
    from llm_server.core.opentelemetry_integration import current_trace_id as current_trace_id
    from llm_server.core.opentelemetry_integration import get_telemetry as get_telemetry
    from llm_server.core.opentelemetry_integration import set_telemetry as set_telemetry
    from llm_server.core.pipeline import Pipeline as Pipeline
    from llm_server.core.pricing import ModelPrice as ModelPrice
    from llm_server.core.protocols import ConfigProvider as ConfigProvider
    from llm_server.core.protocols import ModelBackend as ModelBackend
    from llm_server.core.protocols import PipelineStep as PipelineStep
    from llm_server.core.protocols import StorageAdapter as StorageAdapter
    from llm_server.core.protocols import StoredProgram as StoredProgram
    from llm_server.core.redaction import redact as redact
    from llm_server.core.redaction import register_secret as register_secret
    from llm_server.core.reliability import CircuitBreakerBackend as CircuitBreakerBackend
    from llm_server.core.reliability import DeadlineBackend as DeadlineBackend
    from llm_server.core.reliability import FallbackBackend as FallbackBackend
    from llm_server.core.reliability import ReliabilityListener as ReliabilityListener
    from llm_server.core.reliability import ReliableModel as ReliableModel
    from llm_server.core.reliability import RetryingBackend as RetryingBackend
    from llm_server.core.reliability import build_reliable_backend as build_reliable_backend
    from llm_server.core.retry import RetryPolicy as RetryPolicy
    from llm_server.core.structured import validate_structured as validate_structured
    from llm_server.core.tokens import count_message_tokens as count_message_tokens
    from llm_server.core.tokens import count_text_tokens as count_text_tokens
    from llm_server.core.types import MediaType as MediaType
    from llm_server.core.types import PipelineData as PipelineData
    from llm_server.defaults import FileSystemStorageAdapter as FileSystemStorageAdapter
    from llm_server.defaults import YamlConfigProvider as YamlConfigProvider
    from llm_server.models.dspy_backend import DSPyBackend as DSPyBackend
    from llm_server.models.manager import ModelInfo as ModelInfo
    from llm_server.models.manager import ModelManager as ModelManager
    from llm_server.models.predictor import Predictor as Predictor
    from llm_server.models.program_manager import ProgramManager as ProgramManager
    from llm_server.models.program_manager import ProgramMetadata as ProgramMetadata
    from llm_server.models.program_manager import ProgramRegistry as ProgramRegistry
