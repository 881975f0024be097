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
from llm_server.core.model_config import ModelConfig, ModelsConfig

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

    @staticmethod
    def _where(path: tuple[str, ...]) -> str:
        if len(path) >= 2 and path[0] == "models":
            rest = ".".join(path[2:])
            return f"model {path[1]!r}" + (f", key {rest!r}" if rest else "")
        return "key " + repr(".".join(path)) if path else "top level"

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
                shown = (
                    ""
                    if error["type"].startswith("value_error")
                    else (f" (got {error.get('input')!r})")
                )
                problems.append(f"{where}: {message}{shown}")
        return f"{self.path}: " + "; ".join(problems)

    @staticmethod
    def _suggest(loc: tuple[str, ...]) -> str:
        # loc is ("key",) at the top, or ("models", id, key[, nested key]) inside a model
        owner: type[BaseModel] | None = None
        if len(loc) == 1:
            owner = ModelsConfig
        elif len(loc) == 3 and loc[0] == "models":
            owner = ModelConfig
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
