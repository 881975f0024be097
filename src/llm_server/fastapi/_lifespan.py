"""A lifespan that builds the framework at startup and closes it at shutdown."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from llm_server.core.config import FrameworkSettings

__all__ = ["ProgramSpec", "llm_server_lifespan"]

logger = logging.getLogger("llm_server.fastapi")

ProgramSpec = type | tuple[type, str]
"""A program to register: its class, or ``(class, display name)``."""

HostLifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def llm_server_lifespan(
    *,
    programs: Sequence[ProgramSpec] = (),
    settings: FrameworkSettings | None = None,
    config_path: str | os.PathLike[str] | None = None,
    storage_dir: str | os.PathLike[str] | None = None,
    lifespan: HostLifespan | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Build a FastAPI lifespan that starts and stops the framework.

    At startup it reads the settings, loads and validates the model config, builds every
    model (DSPy LMs; LiteLLM is imported now when a model uses it, not on the first request),
    creates the program storage and ``ProgramManager``, registers ``programs``, and stores
    ``settings``, ``model_manager`` and ``program_manager`` on ``app.state``. Then it runs the
    host's own ``lifespan`` (if given) inside, so the host sees ready managers. At shutdown
    it closes the model clients.

    Args:
        programs: Programs to register (classes, or ``(class, name)`` pairs).
        settings: Settings (default: read from the environment and ``.env``).
        config_path: The YAML model config (default: ``settings.llm_config_path``).
        storage_dir: The program storage folder (default: ``settings.llm_programs_dir``).
        lifespan: The host app's own lifespan, run inside this one.
    """

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        from llm_server.defaults import FileSystemStorageAdapter, YamlConfigProvider
        from llm_server.models.manager import ModelManager
        from llm_server.models.program_manager import ProgramManager

        started = time.perf_counter()
        app.state.llm_server_ready = False
        resolved = settings or FrameworkSettings()
        provider = YamlConfigProvider(Path(config_path or resolved.llm_config_path))
        model_manager = ModelManager(config_provider=provider, settings=resolved)
        try:
            storage = FileSystemStorageAdapter(base_dir=storage_dir or resolved.llm_programs_dir)
            program_manager = ProgramManager(model_manager=model_manager, storage_adapter=storage)
            for spec in programs:
                program_class, name = spec if isinstance(spec, tuple) else (spec, None)
                program_manager.register_program(program_class=program_class, name=name)
            app.state.settings = resolved
            app.state.model_manager = model_manager
            app.state.program_manager = program_manager
            app.state.llm_server_ready = True
            logger.info(
                "llm-server ready: %d models, %d programs in %.0f ms",
                len(model_manager.model_ids),
                len(programs),
                (time.perf_counter() - started) * 1000,
            )
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            app.state.llm_server_ready = False
            await model_manager.aclose()
            app.state.program_manager = None
            app.state.model_manager = None

    return run
