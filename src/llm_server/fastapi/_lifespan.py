"""A lifespan that builds the framework at startup and closes it at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

from fastapi import FastAPI

from llm_server._gc import freeze_heap
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError
from llm_server.core.protocols import ConfigProvider, StorageAdapter

__all__ = ["HostLifespan", "ProgramSpec", "llm_server_lifespan"]

logger = logging.getLogger("llm_server.fastapi")

ProgramSpec: TypeAlias = type | tuple[type, str]
"""A program to register: its class, or ``(class, display name)``."""

HostLifespan: TypeAlias = Callable[[FastAPI], AbstractAsyncContextManager[Any]]
"""A FastAPI lifespan: ``app -> async context manager``."""

_STATE_NAMES = ("settings", "model_manager", "program_manager")


def llm_server_lifespan(
    *,
    programs: Sequence[ProgramSpec] = (),
    settings: FrameworkSettings | None = None,
    config_path: str | os.PathLike[str] | None = None,
    config_provider: ConfigProvider | None = None,
    storage_dir: str | os.PathLike[str] | None = None,
    storage_adapter: StorageAdapter | None = None,
    lifespan: HostLifespan | None = None,
    freeze_gc: bool = False,
) -> Callable[[FastAPI], AbstractAsyncContextManager[Any]]:
    """Build a FastAPI lifespan that starts and stops the framework.

    At startup it reads the settings, loads and validates the model config, builds every
    model (``dspy.LM`` per model; LiteLLM is imported now when a model uses it, so no request
    pays for it), creates the program storage and the ``ProgramManager``, registers
    ``programs`` and stores ``settings``, ``model_manager`` and ``program_manager`` on
    ``app.state``. Nothing is sent to any provider: warming up builds clients, it makes no
    calls. Then the host's own ``lifespan`` (if given) runs inside, seeing ready managers, and
    ``app.state.llm_server_ready`` turns true. At shutdown, readiness turns false first, the
    host's lifespan exits, and the model clients are closed.

    A configuration error (bad YAML, a missing API key) fails startup with a message naming
    the file, model and key.

    Args:
        programs: Programs to register (classes, or ``(class, display name)`` pairs).
        settings: Settings (default: read from the environment and ``.env``).
        config_path: The YAML model config (default: ``settings.llm_config_path``).
        config_provider: A config provider to use instead of the YAML file.
        storage_dir: The program storage folder (default: ``settings.llm_programs_dir``).
        storage_adapter: A storage adapter to use instead of the file-system one (default:
            PostgreSQL when ``LLM_SERVER_PROGRAM_STORE`` is set, which the lifespan then
            follows for releases and closes at shutdown).
        lifespan: The host app's own lifespan, run inside this one.
        freeze_gc: Once everything is started (the host's lifespan included), collect
            garbage and ``gc.freeze()`` what is alive, on every startup. The
            ``ModelManager`` already freezes the heap once per process when it is built
            (``LLM_SERVER_GC_FREEZE``, on by default); this also freezes what was built after
            it. Off by default: objects frozen here that later become cyclic garbage (a test
            app that is thrown away) are never freed.

    Example::

        app = FastAPI(lifespan=llm_server_lifespan(programs=[(Predictor, "Text Completion")]))
    """

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        from llm_server.defaults import FileSystemStorageAdapter, YamlConfigProvider
        from llm_server.models.manager import ModelManager
        from llm_server.models.program_manager import ProgramManager

        started = time.perf_counter()
        app.state.llm_server_ready = False
        resolved = settings if settings is not None else FrameworkSettings()
        provider = config_provider or YamlConfigProvider(
            Path(config_path or resolved.llm_config_path)
        )
        model_manager = ModelManager(config_provider=provider, settings=resolved)
        owned_storage: Any = None
        try:
            storage = storage_adapter
            if storage is None and resolved.program_store is not None:
                storage = owned_storage = _program_store(resolved)
            if storage is None:
                storage = FileSystemStorageAdapter(
                    base_dir=storage_dir or resolved.llm_programs_dir
                )
            program_manager = ProgramManager(model_manager=model_manager, storage_adapter=storage)
            for spec in programs:
                program_class, name = spec if isinstance(spec, tuple) else (spec, None)
                program_manager.register_program(program_class=program_class, name=name)
            program_manager.follow_releases()  # a fleet's store: serve what is released
            app.state.settings = resolved
            app.state.model_manager = model_manager
            app.state.program_manager = program_manager
            logger.info(
                "llm-server started: %d models, %d programs in %.0f ms",
                len(model_manager.model_ids),
                len(program_manager.registry),
                (time.perf_counter() - started) * 1000,
            )
            watcher = asyncio.create_task(model_manager.telemetry.watch_event_loop())
            try:
                if lifespan is None:
                    async with _readiness(app, freeze_gc=freeze_gc):
                        yield
                else:
                    # A host lifespan may yield Starlette lifespan state (a mapping): pass it on.
                    async with lifespan(app) as host_state, _readiness(app, freeze_gc=freeze_gc):
                        yield host_state
            finally:
                await asyncio.to_thread(program_manager.close)  # its canary thread
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        finally:
            app.state.llm_server_ready = False
            traffic = getattr(getattr(app.state, "program_manager", None), "traffic", None)
            if traffic is not None:  # write the captures still queued, stop the writer
                await traffic.aclose()
            await model_manager.aclose()
            if owned_storage is not None:
                await asyncio.to_thread(owned_storage.close)
            for name in _STATE_NAMES:
                setattr(app.state, name, None)

    return run


def _program_store(settings: FrameworkSettings) -> Any:
    """The storage ``LLM_SERVER_PROGRAM_STORE`` names (PostgreSQL; needs the extra)."""
    assert settings.program_store is not None
    try:
        from llm_server.postgres import PostgresStorageAdapter
    except ImportError as exc:
        raise ConfigurationError(
            "LLM_SERVER_PROGRAM_STORE is set, but the PostgreSQL driver is not installed: "
            'pip install "llm-server-framework[postgres]"'
        ) from exc
    key = settings.program_store_key
    return PostgresStorageAdapter(
        settings.program_store.get_secret_value(),
        schema=settings.program_store_schema,
        timeout_s=settings.program_store_timeout_s,
        key=key.get_secret_value() if key is not None else None,
    )


@asynccontextmanager
async def _readiness(app: FastAPI, *, freeze_gc: bool) -> AsyncIterator[None]:
    if freeze_gc:
        freeze_heap()
    app.state.llm_server_ready = True
    try:
        yield
    finally:
        app.state.llm_server_ready = False  # stop taking traffic before anything shuts down
