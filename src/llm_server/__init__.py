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
    "ConfigProvider": "llm_server.core.protocols",
    "FrameworkSettings": "llm_server.core.config",
    "MediaType": "llm_server.core.types",
    "ModelBackend": "llm_server.core.protocols",
    "ModelConfig": "llm_server.core.model_config",
    "ModelOutput": "llm_server.core.model_interfaces",
    "ModelsConfig": "llm_server.core.model_config",
    "Pipeline": "llm_server.core.pipeline",
    "PipelineData": "llm_server.core.types",
    "PipelineStep": "llm_server.core.protocols",
    "StorageAdapter": "llm_server.core.protocols",
    "StoredProgram": "llm_server.core.protocols",
    "TokenCountMethod": "llm_server.core.model_interfaces",
    "TokenUsage": "llm_server.core.model_interfaces",
    "YamlConfigProvider": "llm_server.defaults",
}
_EXPORTS.update(
    dict.fromkeys(
        importlib.import_module("llm_server.core.errors").__all__, "llm_server.core.errors"
    )
)

__all__ = [  # sorted; tests/test_public_api.py keeps it equal to _EXPORTS
    "CircuitOpenError",
    "ConfigProvider",
    "ConfigurationError",
    "ContextWindowExceededError",
    "CorruptProgramError",
    "DataValidationError",
    "DeadlineExceededError",
    "FrameworkSettings",
    "InputError",
    "InvalidIdentifierError",
    "LLMServerError",
    "MediaType",
    "MediaTypeMismatchError",
    "MissingAPIKeyError",
    "ModelBackend",
    "ModelCallError",
    "ModelConfig",
    "ModelNotFoundError",
    "ModelOutput",
    "ModelTimeoutError",
    "ModelsConfig",
    "OutputParseError",
    "PayloadTooLargeError",
    "Pipeline",
    "PipelineData",
    "PipelineError",
    "PipelineStep",
    "PipelineValidationError",
    "ProgramAlreadyRegisteredError",
    "ProgramError",
    "ProgramNotFoundError",
    "ProviderAuthError",
    "ProviderBadRequestError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "StepError",
    "StorageAdapter",
    "StorageError",
    "StoredProgram",
    "TokenCountMethod",
    "TokenUsage",
    "UndecodableInputError",
    "UnsupportedMediaError",
    "VersionExistsError",
    "YamlConfigProvider",
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
    from llm_server.core.model_config import ModelConfig as ModelConfig
    from llm_server.core.model_config import ModelsConfig as ModelsConfig
    from llm_server.core.model_interfaces import ModelOutput as ModelOutput
    from llm_server.core.model_interfaces import TokenCountMethod as TokenCountMethod
    from llm_server.core.model_interfaces import TokenUsage as TokenUsage
    from llm_server.core.pipeline import Pipeline as Pipeline
    from llm_server.core.protocols import ConfigProvider as ConfigProvider
    from llm_server.core.protocols import ModelBackend as ModelBackend
    from llm_server.core.protocols import PipelineStep as PipelineStep
    from llm_server.core.protocols import StorageAdapter as StorageAdapter
    from llm_server.core.protocols import StoredProgram as StoredProgram
    from llm_server.core.types import MediaType as MediaType
    from llm_server.core.types import PipelineData as PipelineData
    from llm_server.defaults import YamlConfigProvider as YamlConfigProvider
