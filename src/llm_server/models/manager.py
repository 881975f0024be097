"""The model manager: one ``dspy.LM`` per configured model, built when the host app starts.

Construction is startup: it loads the YAML configuration, resolves every API key (a missing
one fails here, naming its variable, not as a provider 401 mid-request), builds each model's
``dspy.LM`` with its engine pinned, DSPy's retries and history off and its cache off unless
the model opts in, and imports LiteLLM if a model uses it, so no request pays for that. Nothing
touches the network: prices and context windows come from LiteLLM's bundled map.

Example::

    import dspy

    from llm_server.core.config import FrameworkSettings
    from llm_server.defaults import YamlConfigProvider
    from llm_server.models.manager import ModelManager

    manager = ModelManager(
        config_provider=YamlConfigProvider("config/model_config.yml"),
        settings=FrameworkSettings(),
    )
    backend = manager.reliable_backend(dspy.Predict("question -> answer"), "gpt-4o-mini")
    output = await backend.predict({"question": "What is DSPy?"})
"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.lowlevel import RunVar
from pydantic import BaseModel, ConfigDict, Field

from llm_server._deprecation import deprecated
from llm_server._gc import freeze_startup_heap_once, raise_young_threshold
from llm_server._offline import ensure_offline
from llm_server.core.clock import Clock
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError, ModelNotFoundError
from llm_server.core.model_config import ModelConfig, ModelsConfig
from llm_server.core.pricing import ModelPrice, resolve_price
from llm_server.core.protocols import ConfigProvider, ModelBackend
from llm_server.core.reliability._breaker import CircuitBreaker
from llm_server.core.reliability._budgets import TenantBudgets
from llm_server.core.reliability._rate_limit import RateLimiter
from llm_server.core.telemetry._otel import Telemetry
from llm_server.core.telemetry._redaction import register_secret
from llm_server.models._engine import ResolvedKey, check_additional_params, resolve_api_key
from llm_server.models._stack import ReliabilityStack
from llm_server.models._startup import (
    configure_dspy_cache,
    connect_fleet,
    context_window,
    default_telemetry,
    import_litellm,
    share_caches,
)
from llm_server.models.dspy_backend import DSPyBackend

__all__ = ["ModelInfo", "ModelManager"]

logger = logging.getLogger(__name__)


_BACKEND_CACHE_SIZE = 256
_NATIVE_POOL = 100  # DSPy's native (lm15) engine: connections per event loop by default


def _instantiate(program: Any) -> Any:
    """A runnable module for a signature class, a module class or a module instance."""
    import dspy

    if isinstance(program, type):
        if issubclass(program, dspy.Signature):
            return dspy.Predict(program)
        if issubclass(program, dspy.Module):
            return program()
        raise ConfigurationError(
            f"{program.__name__} is neither a dspy.Signature nor a dspy.Module subclass"
        )
    return program


class ModelInfo(BaseModel):
    """What is known about one configured model.

    ``model_dump(by_alias=True)`` gives exactly the response envelope's ``model`` block,
    ``{"id": ..., "provider": ..., "base_model": ...}``; the other fields are excluded from
    dumps but readable as attributes.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, protected_namespaces=())

    model_id: str = Field(alias="id")
    """The configured model id."""
    provider: str
    """The provider prefix of ``model_name`` (``openai``)."""
    base_model: str
    """``model_name`` without the provider prefix (``gpt-4o-mini``)."""
    model_name: str = Field(exclude=True)
    """``provider/model`` as DSPy and LiteLLM name it."""
    max_tokens: int = Field(exclude=True)
    """Completion token limit per call, from the YAML."""
    context_window: int | None = Field(default=None, exclude=True)
    """Prompt token limit: the YAML ``context_window``, else LiteLLM's map, else ``None``."""
    input_cost_per_million: float | None = Field(default=None, exclude=True)
    """USD per million prompt tokens, or ``None`` when unknown."""
    output_cost_per_million: float | None = Field(default=None, exclude=True)
    """USD per million completion tokens, or ``None`` when unknown."""
    max_connections: int | None = Field(default=None, exclude=True)
    """Connections to the provider at once per event loop (native engine; ``None``: LiteLLM's
    own pool, not configured here)."""
    engine: str = Field(exclude=True)
    """The DSPy engine the model was built with: ``lm15`` (DSPy's native client) or ``litellm``."""


class ModelManager:
    """Builds and holds one ``dspy.LM`` per configured model.

    The first manager built in a process also freezes the startup heap (``gc.freeze()``
    after a full collection; see :mod:`llm_server._gc`), so the garbage collector stops
    re-scanning DSPy and the models on every full collection. ``LLM_SERVER_GC_FREEZE=false``
    (``FrameworkSettings(gc_freeze=False)``) turns it off. It also raises the young
    generation's threshold from Python's 700 to ``LLM_SERVER_GC_YOUNG_THRESHOLD`` (7,000; ``0``
    keeps Python's; a threshold the host set itself is kept).

    Args:
        config_provider: Supplies the validated model configuration.
        settings: Framework settings (default: read from the environment).
        environ: Where API keys are read from (default: ``os.environ``).
        telemetry: Where spans and metrics go (default: the process-wide one when it is on,
            else a new one from ``settings``; an enabled one becomes the process-wide default
            so pipelines are traced too).
        clock: Time source of breakers, retries and deadlines (inject a fake in tests).
        rng: Jitter source of the retries.

    Attributes:
        settings: The framework settings.
        config: The loaded model configuration.
        model_ids: Configured model ids, in file order.
        model_info: Per model id, its :class:`ModelInfo`.
        breakers: Per model id, its circuit breaker.
        telemetry: The telemetry every model call reports to.

    Raises:
        ConfigurationError: The configuration is invalid, or DSPy refused a model's settings.
        MissingAPIKeyError: A model's key is not set (the message names the variable).
    """

    def __init__(
        self,
        *,
        config_provider: ConfigProvider,
        settings: FrameworkSettings | None = None,
        environ: Mapping[str, str] | None = None,
        telemetry: Telemetry | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        ensure_offline()
        self.settings = settings if settings is not None else FrameworkSettings()
        self.config: ModelsConfig = config_provider.load()
        self.model_ids: list[str] = list(self.config.models)
        env = os.environ if environ is None else environ

        # Every check that needs no DSPy first, so a bad config fails fast and cheaply.
        keys: dict[str, ResolvedKey] = {}
        for model_id, model in self.config.models.items():
            check_additional_params(model_id, model)
            keys[model_id] = resolve_api_key(model_id, model, env)
            if not keys[model_id].placeholder:
                register_secret(keys[model_id].value)

        from llm_server.models import _managed_lm

        configure_dspy_cache(any(model.cache for model in self.config.models.values()))
        self._lms: dict[str, Any] = {}
        self._prices: dict[str, ModelPrice | None] = {}
        self.model_info: dict[str, ModelInfo] = {}
        for model_id, model in self.config.models.items():
            lm, engine = _managed_lm.build_lm(
                model_id,
                model,
                engine=model.engine or self.settings.default_engine,
                key=keys[model_id],
                timeout_s=model.timeout_s or self.settings.model_timeout_s,
                context_window=context_window(model),
            )
            self._lms[model_id] = lm
            self._prices[model_id] = resolve_price(model.model_name, override=model.pricing)
            self.model_info[model_id] = self._describe(model_id, model, engine)
        if any(info.engine == "litellm" for info in self.model_info.values()):
            import_litellm()
        self.telemetry = telemetry or default_telemetry(self.settings)
        self.fleet = connect_fleet(self.settings)
        self._stack = ReliabilityStack(
            self.config,
            self.settings,
            telemetry=self.telemetry,
            clock=clock,
            rng=rng,
            breaker_store=self.fleet.breakers if self.fleet is not None else None,
            limit_counters=self.fleet.limits if self.fleet is not None else None,
            usage_counters=self.fleet.usage if self.fleet is not None else None,
        )
        self.budgets: TenantBudgets = self._stack.budgets
        if self.fleet is not None and self.budgets.configured:
            self.fleet.check_budget_durability()  # budgets' usage lives in Redis
        self.breakers: dict[str, CircuitBreaker] = self._stack.breakers
        self.limiters: dict[str, RateLimiter] = self._stack.limiters
        for model_id, limiter in self.limiters.items():
            self._lms[model_id].limit_rate(limiter)
        for model_id, lm in self._lms.items():
            lm.price_calls(self._prices[model_id])
        self.caches = share_caches(self.config, self.fleet, self._lms, keys)
        self.telemetry.observe_limits(self.limiters.values(), self.fleet, self.budgets)
        self.telemetry.observe_caches(self.caches.values())
        if self.fleet is not None:
            self.fleet.start()
        self._backends: OrderedDict[tuple[int, str], tuple[Any, ModelBackend]] = OrderedDict()
        self._sync_limiter: RunVar[anyio.CapacityLimiter] = RunVar(
            f"llm_server_sync_programs_{id(self)}"
        )
        logger.info(
            "models ready: %s",
            ", ".join(f"{mid} ({info.engine})" for mid, info in self.model_info.items()),
        )
        if self.settings.gc_freeze:
            # The end of a service's startup: DSPy and the models are loaded for good.
            freeze_startup_heap_once()
        raise_young_threshold(self.settings.gc_young_threshold)

    def _describe(self, model_id: str, model: ModelConfig, engine: str) -> ModelInfo:
        price = self._prices[model_id]
        return ModelInfo(
            id=model_id,
            provider=model.provider,
            base_model=model.base_model,
            model_name=model.model_name,
            max_tokens=model.max_tokens,
            context_window=context_window(model),
            input_cost_per_million=price.input_per_million if price else None,
            output_cost_per_million=price.output_per_million if price else None,
            engine=engine,
            max_connections=(model.max_connections or _NATIVE_POOL) if engine == "lm15" else None,
        )

    def _check(self, model_id: str) -> None:
        if model_id not in self._lms:
            raise ModelNotFoundError(model_id, self.model_ids)

    def get_model_config(self, model_id: str) -> ModelConfig:
        """The YAML configuration of ``model_id``.

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
        """
        self._check(model_id)
        return self.config.models[model_id]

    def get_lm(self, model_id: str) -> Any:
        """The ``dspy.LM`` of ``model_id`` (no history, retries off, engine pinned).

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
        """
        self._check(model_id)
        return self._lms[model_id]

    def get_price(self, model_id: str) -> ModelPrice | None:
        """The price used for ``model_id``'s cost, or ``None`` when unknown.

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
        """
        self._check(model_id)
        return self._prices[model_id]

    def single_attempt_backend(
        self, program: Any, model_id: str, *, program_metadata: Any = None
    ) -> DSPyBackend:
        """A backend running ``program`` (a ``dspy.Module``) on ``model_id``, one attempt per call.

        One HTTP attempt per LM call: no retries, breaker, deadline or fallback. Requests
        should use :meth:`reliable_backend`; this is the innermost layer it wraps, for tests
        and for hosts composing their own stack.

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
        """
        self._check(model_id)
        model = self.config.models[model_id]
        return DSPyBackend(
            program,
            model_id=model_id,
            lm=self._lms[model_id],
            model_name=model.model_name,
            price=self._prices[model_id],
            limiter=self._worker_limiter,
            program_metadata=program_metadata,
            first_token_timeout_s=model.first_token_timeout_s,
            # the program's registered adapter, else the model's, else the host's default
            adapter=getattr(program_metadata, "adapter", None) or model.adapter,
            # the program's registered parse policy, else the model's, else none
            parse_policy=getattr(program_metadata, "parse_policy", None) or model.parse_policy,
            max_tokens=model.max_tokens,
            show_answers=self.settings.otel_capture_message_content,
            content_max_length=self.settings.otel_content_max_length,
            admit=self.breakers[model_id].would_admit,
        )

    def reliable_backend(
        self, program: Any, model_id: str, *, program_metadata: Any = None
    ) -> ModelBackend:
        """The backend requests should use for ``program`` (a ``dspy.Module``) on ``model_id``.

        It is :meth:`single_attempt_backend` inside the reliability and telemetry layers:
        model-call span -> request deadline -> fallbacks -> per model: retries -> circuit
        breaker -> one HTTP attempt (drawn on the front page of
        :mod:`llm_server.core.reliability`).

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
        """
        self._check(model_id)
        program_id = getattr(program_metadata, "id", None)
        return self._stack.compose(
            model_id,
            lambda mid: self.single_attempt_backend(
                program, mid, program_metadata=program_metadata
            ),
            program_id=program_id if isinstance(program_id, str) else None,
        )

    def ensure_available(self, model_id: str) -> None:
        """Refuse at once when every breaker a call to ``model_id`` could use would refuse it.

        That is ``model_id``'s breaker and each of its ``fallbacks:``. Call it first in a
        route, before building inputs or running a pipeline: a refused request then costs a
        few microseconds instead of the pipeline, DSPy and envelope work that the model-call
        stack would do before its breaker refuses. The program routes of
        :func:`llm_server.fastapi.add_program_endpoint` do. Refusals count as the breakers'
        own (snapshot, metrics, the periodic log line).

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
            CircuitOpenError: Every breaker would refuse (``retry_after_s`` is the primary's).
        """
        self._check(model_id)
        error = self._stack.refusal(model_id)
        if error is not None:
            raise error

    def backend_for(self, program: Any, model_id: str) -> ModelBackend:
        """The composed backend for ``program`` on ``model_id``, built once and cached.

        ``program`` is a ``dspy.Signature`` subclass (run with ``dspy.Predict``), a
        ``dspy.Module`` subclass (instantiated once) or a module instance. This is what
        :class:`~llm_server.core.implementations.ModelProcessor` calls, so building a
        processor per request costs a dictionary lookup.

        Raises:
            ModelNotFoundError: ``model_id`` is not configured.
        """
        key = (id(program), model_id)
        cached = self._backends.get(key)
        if cached is not None and cached[0] is program:
            self._backends.move_to_end(key)
            return cached[1]
        self._check(model_id)
        backend = self.reliable_backend(_instantiate(program), model_id)
        self._backends[key] = (program, backend)  # holding `program` keeps its id unique
        if len(self._backends) > _BACKEND_CACHE_SIZE:
            self._backends.popitem(last=False)
        return backend

    def create_backend(
        self, program: Any, model_id: str, *, program_metadata: Any = None
    ) -> DSPyBackend:
        """Deprecated: the same as :meth:`single_attempt_backend` (no retries, breaker,
        deadline or fallback); requests should use :meth:`reliable_backend`."""
        deprecated("ModelManager.create_backend", "ModelManager.single_attempt_backend")
        return self.single_attempt_backend(program, model_id, program_metadata=program_metadata)

    def build_backend(
        self, program: Any, model_id: str, *, program_metadata: Any = None
    ) -> ModelBackend:
        """Deprecated: the same as :meth:`reliable_backend`."""
        deprecated("ModelManager.build_backend", "ModelManager.reliable_backend")
        return self.reliable_backend(program, model_id, program_metadata=program_metadata)

    def _worker_limiter(self) -> anyio.CapacityLimiter:
        # One limiter per event loop (anyio limiters are loop-bound); sized by the settings.
        try:
            return self._sync_limiter.get()
        except LookupError:
            limiter = anyio.CapacityLimiter(self.settings.blocking_workers)
            self._sync_limiter.set(limiter)
            return limiter

    async def aclose(self) -> None:
        """Close the HTTP connection pools of every model (call from the host's lifespan exit).

        DSPy keeps one pool per event loop per LM; this closes the running loop's pools and the
        synchronous ones. When a model uses LiteLLM, LiteLLM's cached async clients are closed
        and dropped from its cache too (a later call rebuilds them).
        """
        for lm in self._lms.values():
            try:
                await lm.aclose()
            except Exception:  # closing must not hide the host's own shutdown error
                logger.warning("closing the LM of %s failed", lm.model, exc_info=True)
        if any(info.engine == "litellm" for info in self.model_info.values()):
            from llm_server.models._litellm_clients import close_litellm_clients

            await close_litellm_clients()
        if self.fleet is not None:
            await self.fleet.aclose()
            self.fleet.close()
