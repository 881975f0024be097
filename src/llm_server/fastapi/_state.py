"""Where the integration keeps the managers: ``app.state`` and route dependencies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from llm_server.core.errors import ConfigurationError

if TYPE_CHECKING:
    from llm_server.core.config import FrameworkSettings
    from llm_server.models.manager import ModelManager
    from llm_server.models.program_manager import ProgramManager

__all__ = ["get_model_manager", "get_program_manager", "get_settings"]


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ConfigurationError(
            f"app.state.{name} is not set: is the app's lifespan llm_server_lifespan(...) "
            "(or does your own lifespan set it)?"
        )
    return value


def get_program_manager(request: Request) -> ProgramManager:
    """Route dependency: the app's ``ProgramManager``."""
    manager: ProgramManager = _state(request, "program_manager")
    return manager


def get_model_manager(request: Request) -> ModelManager:
    """Route dependency: the app's ``ModelManager``."""
    manager: ModelManager = _state(request, "model_manager")
    return manager


def get_settings(request: Request) -> FrameworkSettings:
    """Route dependency: the app's ``FrameworkSettings``."""
    settings: FrameworkSettings = _state(request, "settings")
    return settings
