"""The public surface: explicit, sorted, importable, and light to import."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import llm_server
import llm_server.testing

ROOT = Path(__file__).parents[1]


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _homes() -> dict[str, str]:
    homes: dict[str, str] = {}
    for info in pkgutil.walk_packages(llm_server.__path__, "llm_server."):
        if _is_private(info.name) or info.name.endswith("__main__"):
            continue
        for name in getattr(importlib.import_module(info.name), "__all__", ()):
            assert name not in homes, f"{name} is documented in {homes[name]} and {info.name}"
            homes[name] = info.name
    return homes


HOMES = _homes()
_PRIVATE_IMPORT = re.compile(
    r"^\s*(?:from\s+llm_server(?:\.\w+)*\.(?:_\w+)\b|import\s+llm_server(?:\.\w+)*\._\w+"
    r"|from\s+llm_server(?:\.\w+)*\s+import\s+_\w+)",
    re.M,
)


def _documents() -> Iterator[Path]:
    yield ROOT / "README.md"
    for folder in ("docs", "examples"):  # benchmarks may measure internals, as tests do
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in {".md", ".py"}:
                yield path


PRIVATE_IMPORTS = [
    (path.relative_to(ROOT), match.group(0))
    for path in _documents()
    for match in _PRIVATE_IMPORT.finditer(path.read_text())
]


def imported_names(folder: Path) -> Iterator[tuple[Path, str, str]]:
    """``(file, module, name)`` for every ``from llm_server... import name`` under ``folder``."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_server"):
                for alias in node.names:
                    yield path.relative_to(ROOT), node.module or "", alias.name


def test_all_is_sorted_and_comes_from_the_one_list() -> None:
    assert llm_server.__all__ == sorted(llm_server.__all__)
    assert set(llm_server.__all__) == set(llm_server._EXPORTS)
    assert 20 <= len(llm_server.__all__) <= 30  # the names a service needs, not every name


def test_every_top_level_name_resolves_to_its_home() -> None:
    for name, module in llm_server._EXPORTS.items():
        value = getattr(llm_server, name)
        assert getattr(importlib.import_module(module), name) is value, name
        assert HOMES[name] == module, f"{name} is re-exported from {module}, not its home"


def test_every_public_name_has_one_documented_home() -> None:
    # HOMES is built from every public module's __all__; it refuses a name listed twice.
    assert "CircuitBreaker" in HOMES
    assert HOMES["CircuitBreaker"] == "llm_server.core.circuit_breaker"
    assert HOMES["ModelBackend"] == "llm_server.core.protocols"


def test_private_modules_stay_private_to_the_library() -> None:
    for path, line in PRIVATE_IMPORTS:
        if path.parts[0] == "tests":
            continue
        pytest.fail(f"{path} imports a private module: {line.strip()}")


def test_tests_import_public_names_from_their_home() -> None:
    offences = []
    for path, module, name in imported_names(Path("tests")):
        if _is_private(module) and name in HOMES:
            offences.append(f"{path}: {name} from {module} (home: {HOMES[name]})")
    assert not offences, "\n".join(offences)


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


def _reference_ids(site: Path) -> set[str]:
    """The anchors of every documented object on the built API reference pages."""
    ids: set[str] = set()
    for page in (site / "reference" / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(llm_server[\w.]*)"', page.read_text(encoding="utf-8")))
    return ids


@pytest.mark.timeout(300)
def test_every_public_name_has_an_api_reference_entry(tmp_path: Path) -> None:
    """Builds the site (strict) in ``tmp_path``; each ``__all__`` name needs its own entry.

    An entry is what mkdocstrings renders for the name in its home module: a ``:::`` directive
    on an API page reaching it, and a docstring (objects without one are not shown).
    """
    # built in tmp_path: the site's configuration and pages copied, the code read in place
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "paths: [src]" in config
    config = config.replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    zensical = Path(sys.executable).parent / "zensical"
    result = subprocess.run(
        [str(zensical), "build", "--strict", "--clean", "-f", str(tmp_path / "mkdocs.yml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ids = _reference_ids(tmp_path / "site")
    missing = [
        f"{home}.{name}" for name, home in sorted(HOMES.items()) if f"{home}.{name}" not in ids
    ]
    assert not missing, (
        "public names without an API reference entry (add a docstring, or a ::: directive "
        f"for the module on a page of docs/reference/api/): {missing}"
    )
    assert len(HOMES) >= 150  # the check saw the whole public surface
