"""The public surface: explicit, sorted, importable, and light to import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import llm_server
import llm_server.testing


def test_all_is_sorted_and_matches_exports() -> None:
    assert llm_server.__all__ == sorted(llm_server.__all__)
    assert set(llm_server.__all__) == set(llm_server._EXPORTS)


def test_every_public_name_resolves_to_the_module_it_is_documented_in() -> None:
    for name, module in llm_server._EXPORTS.items():
        value = getattr(llm_server, name)
        assert getattr(importlib.import_module(module), name) is value, name


def test_testing_exports_are_explicit() -> None:
    assert llm_server.testing.__all__ == sorted(llm_server.testing._EXPORTS)
    for name in llm_server.testing.__all__:
        assert getattr(llm_server.testing, name) is not None


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NotAThing"):
        llm_server.NotAThing  # noqa: B018 - the access itself is the test


def test_import_is_light_and_silent() -> None:
    code = (
        "import sys, llm_server\n"
        "heavy = sorted(m for m in ('dspy', 'litellm', 'PIL', 'opentelemetry.sdk', 'tiktoken')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


REFERENCE_NAMES = {
    "llm_server.core.config": ["FrameworkSettings"],
    "llm_server.core.metrics_wrappers": ["PerformanceMetrics", "ModelBackendTracker"],
    "llm_server.defaults": ["FileSystemStorageAdapter", "YamlConfigProvider"],
    "llm_server.models.manager": ["ModelManager"],
    "llm_server.models.predictor": ["Predictor"],
    "llm_server.models.program_manager": ["ProgramManager"],
    "llm_server.core.pipeline": ["Pipeline"],
    "llm_server.core.implementations": [
        "ModelProcessor",
        "DefaultOutputProcessor",
        "ImageProcessor",
    ],
    "llm_server.core.metadata": ["MetadataCollector"],
    "llm_server.core.types": ["MediaType", "PipelineData"],
    "llm_server.core.protocols": ["PipelineStep", "ModelBackend"],
    "llm_server.core.model_interfaces": ["ModelOutput"],
    "llm_server.core.circuit_breaker": ["CircuitBreaker"],
}


@pytest.mark.parametrize(("module", "names"), REFERENCE_NAMES.items())
def test_reference_names_import_from_their_path_and_from_the_package(
    module: str, names: list[str]
) -> None:
    for name in names:
        value = getattr(importlib.import_module(module), name)
        assert getattr(llm_server, name) is value, name
