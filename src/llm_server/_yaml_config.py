"""Loading the YAML model configuration: safe parsing, ``${VAR}`` expansion, readable errors."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llm_server.core.errors import ConfigurationError, MissingAPIKeyError
from llm_server.core.model_config import CaptureConfig, ModelConfig, ModelsConfig
from llm_server.core.telemetry import redact

__all__ = ["YamlConfigProvider"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class YamlConfigProvider:
    """Reads and validates a YAML model configuration file.

    Strings may reference the environment as ``${VAR}`` or ``${VAR:-default}``, so keys and
    endpoints never need to be written into the file. Only ``yaml.safe_load`` is used.

    Args:
        path: The YAML file.
        environ: The environment to expand ``${VAR}`` from (default: ``os.environ``).

    Raises (from :meth:`load`):
        ConfigurationError: The file is missing, empty, not valid YAML (with its line), or
            breaks the schema; the message names the file, the model id and the key.
    """

    def __init__(self, path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None):
        self.path = Path(path)
        self._environ = environ
        self._marks: dict[tuple[str, ...], tuple[int, int]] = {}

    def load(self) -> ModelsConfig:
        """Load, expand and validate the file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                f"{self.path}: model config file not found (set LLM_CONFIG_PATH or pass the path)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{self.path}: cannot read model config: {exc}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigurationError(f"{self.path}: invalid YAML{where}: {problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{self.path}: invalid YAML: {exc}") from None
        if raw is None:
            raise ConfigurationError(f"{self.path}: model config file is empty")
        if not isinstance(raw, dict):
            raise ConfigurationError(
                f"{self.path}: expected a mapping with a 'models' key at the top, "
                f"got {type(raw).__name__}"
            )
        self._marks = _key_marks(text)
        environ = os.environ if self._environ is None else self._environ
        expanded = self._expand(raw, (), environ)
        try:
            return ModelsConfig.model_validate(expanded)
        except ValidationError as exc:
            raise ConfigurationError(self._describe(exc)) from None

    def _expand(self, value: Any, path: tuple[str, ...], environ: Mapping[str, str]) -> Any:
        if isinstance(value, dict):
            return {k: self._expand(v, (*path, str(k)), environ) for k, v in value.items()}
        if isinstance(value, list):
            return [self._expand(v, (*path, str(i)), environ) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            where = self._where(path)
            message = f"{self.path}: {where}: environment variable {name} is not set"
            if path and path[-1] == "api_key":
                model_id = path[1] if len(path) > 1 else "?"
                raise MissingAPIKeyError(message, model_id=model_id, env_var=name)
            raise ConfigurationError(message)

        return _ENV_REF.sub(substitute, value)

    def _where(self, path: tuple[str, ...]) -> str:
        if len(path) >= 2 and path[0] in ("models", "capture"):
            rest = ".".join(path[2:])
            owner = "model" if path[0] == "models" else "capture of program"
            where = f"{owner} {path[1]!r}" + (f", key {rest!r}" if rest else "")
        else:
            where = "key " + repr(".".join(path)) if path else "top level"
        # the line of the key itself, else of the nearest key around it (a missing key)
        for end in range(len(path), 0, -1):
            mark = self._marks.get(path[:end])
            if mark is not None:
                return f"{where} (line {mark[0]}, column {mark[1]})"
        return where

    def _describe(self, exc: ValidationError) -> str:
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            where = self._where(loc)
            if error["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown key{self._suggest(loc)}")
            elif error["type"] == "missing":
                problems.append(f"{where}: required key is missing")
            else:
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}{_shown(loc, error)}")
        return f"{self.path}: " + "; ".join(problems)

    @staticmethod
    def _suggest(loc: tuple[str, ...]) -> str:
        # loc is ("key",) at the top, or ("models", id, key[, nested key]) inside a model
        owner: type[BaseModel] | None = None
        if len(loc) == 1:
            owner = ModelsConfig
        elif len(loc) == 3 and loc[0] == "models":
            owner = ModelConfig
        elif len(loc) == 3 and loc[0] == "capture":
            owner = CaptureConfig
        elif len(loc) == 4 and loc[0] == "models" and loc[2] in ModelConfig.model_fields:
            annotation = ModelConfig.model_fields[loc[2]].annotation
            owner = next((a for a in getattr(annotation, "__args__", ()) if _is_model(a)), None)
        if owner is None:
            return ""
        allowed = sorted(owner.model_fields)
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{hint} (allowed keys: {', '.join(allowed)})"


def _is_model(candidate: object) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


_SECRET_KEYS = frozenset({"api_key", "key", "token", "password", "secret"})


def _shown(loc: tuple[str, ...], error: Mapping[str, Any]) -> str:
    """`` (got ...)`` for a schema error, unless the value may be a secret.

    A secret field's value is never repeated, whatever its type (a key written as a list is
    still a key), and neither is any value a key-shaped pattern or a registered secret
    matches.
    """
    if str(error.get("type", "")).startswith("value_error"):
        return ""
    if any(part in _SECRET_KEYS or part.endswith(("_key", "_token", "_secret")) for part in loc):
        return " (the value is not shown: it may be a secret)"
    shown = repr(error.get("input"))
    if redact(shown) != shown:
        return " (the value is not shown: it looks like a secret)"
    return f" (got {shown})"


def _key_marks(text: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """``path -> (line, column)`` (1-based) of every key and list item in a YAML document."""
    marks: dict[tuple[str, ...], tuple[int, int]] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return marks  # safe_load parsed it; a composer failure only costs the line numbers

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                marks[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                marks[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
                walk(item, child)

    if root is not None:
        walk(root, ())
    return marks
