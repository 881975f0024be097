"""The ModelBackend wrappers, alone and composed by build_reliable_backend."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from llm_server.core.circuit_breaker import BreakerState, CircuitBreaker
from llm_server.core.errors import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    ProviderBadRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability import (
    BackendWrapper,
    CircuitBreakerBackend,
    DeadlineBackend,
    FallbackBackend,
    ReliableModel,
    RetryingBackend,
    RetryPolicy,
    build_reliable_backend,
    current_deadline,
)
from llm_server.core.telemetry import RequestObserver, observing
from llm_server.testing import FakeClock, ScriptedBackend

pytestmark = pytest.mark.anyio

HTTP_500 = ProviderUnavailableError("provider answered 500", model_id="primary")


@dataclass
class Events(RequestObserver):
    retries: list[tuple[str, int, float]] = field(default_factory=list)
    fallbacks: list[tuple[str, str, str]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        self.retries.append((model_id, attempt, delay_s))

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        self.fallbacks.append((from_model_id, to_model_id, type(error).__name__))

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        self.refusals.append(model_id)


class Observed(BackendWrapper):
    """Runs each call with ``observer`` attached, as a request would."""

    def __init__(self, backend: ModelBackend, observer: RequestObserver) -> None:
        super().__init__(backend)
        self.observer = observer

    async def predict(self, input: Any) -> ModelOutput:
        with observing(self.observer):
            return await self._backend.predict(input)


def breaker_for(model_id: str, clock: FakeClock, threshold: int = 5) -> CircuitBreaker:
    return CircuitBreaker(name=model_id, failure_threshold=threshold, reset_timeout=60, clock=clock)


def chain(
    clock: FakeClock,
    primary: ScriptedBackend,
    *fallbacks: ScriptedBackend,
    attempts: int = 3,
    observer: RequestObserver | None = None,
    deadline_s: float | None = 30.0,
) -> tuple[ModelBackend, dict[str, CircuitBreaker]]:
    breakers = {b.model_id: breaker_for(b.model_id, clock) for b in (primary, *fallbacks)}
    policy = RetryPolicy(max_attempts=attempts, initial_backoff_s=0.1, max_backoff_s=1.0)

    def model(b: ScriptedBackend) -> ReliableModel:
        return ReliableModel(b, breakers[b.model_id], policy)

    backend = build_reliable_backend(
        model(primary),
        [model(f) for f in fallbacks],
        deadline_s=deadline_s,
        clock=clock,
        rng=random.Random(0),
    )
    if observer is not None:
        backend = Observed(backend, observer)
    return backend, breakers


# --- the composed chain ----------------------------------------------------------------------


async def test_the_composition_order_is_deadline_fallback_retries_breaker_call(
    clock: FakeClock,
) -> None:
    backend, _ = chain(clock, ScriptedBackend(model_id="primary"), ScriptedBackend(model_id="b"))
    layers = []
    current: Any = backend
    while hasattr(current, "wrapped"):
        layers.append(type(current).__name__)
        current = current.wrapped
    assert layers == [
        "DeadlineBackend",
        "FallbackBackend",
        "RetryingBackend",
        "CircuitBreakerBackend",
    ]
    assert isinstance(backend, ModelBackend)
    assert backend.model_id == "primary"


async def test_500s_open_the_breaker_after_the_threshold_counting_each_attempt(
    clock: FakeClock,
) -> None:
    provider = ScriptedBackend(model_id="primary", default=HTTP_500)
    backend, breakers = chain(clock, provider)
    with pytest.raises(ProviderUnavailableError):
        await backend.predict("q")  # 3 attempts, 3 failures
    assert provider.calls == 3
    assert breakers["primary"].state is BreakerState.CLOSED
    with pytest.raises(ProviderUnavailableError):
        await backend.predict("q")  # 2 more attempts open it; no attempt into the open breaker
    assert provider.calls == 5
    assert breakers["primary"].state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await backend.predict("q")
    assert provider.calls == 5  # refused without a request


async def test_the_breaker_half_opens_after_the_reset_timeout_and_closes_on_success(
    clock: FakeClock,
) -> None:
    provider = ScriptedBackend([HTTP_500] * 5, model_id="primary", default="recovered")
    backend, breakers = chain(clock, provider)
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await backend.predict("q")
    assert breakers["primary"].state is BreakerState.OPEN
    clock.advance(60)
    assert breakers["primary"].state is BreakerState.HALF_OPEN
    output = await backend.predict("q")
    assert output.content == "recovered"
    assert breakers["primary"].state is BreakerState.CLOSED


async def test_a_fallback_answers_when_the_primary_is_open(clock: FakeClock) -> None:
    primary = ScriptedBackend(model_id="primary")
    backup = ScriptedBackend(model_id="backup", default="from backup")
    events = Events()
    backend, breakers = chain(clock, primary, backup, observer=events)
    breakers["primary"].force_open()
    output = await backend.predict("q")
    assert output.model_id == "backup"
    assert output.content == "from backup"
    assert output.metadata["fallback_from"] == ["primary"]
    assert primary.calls == 0
    assert events.fallbacks == [("primary", "backup", "CircuitOpenError")]
    assert events.refusals == ["primary"]


async def test_fallbacks_are_tried_in_the_order_given(clock: FakeClock) -> None:
    primary = ScriptedBackend(model_id="primary", default=HTTP_500)
    first = ScriptedBackend(model_id="first", default=HTTP_500)
    second = ScriptedBackend(model_id="second", default="from second")
    third = ScriptedBackend(model_id="third", default="from third")
    events = Events()
    backend, _ = chain(clock, primary, first, second, third, attempts=1, observer=events)
    output = await backend.predict("q")
    assert (output.model_id, output.content) == ("second", "from second")
    assert output.metadata["fallback_from"] == ["primary", "first"]
    assert [(f, t) for f, t, _ in events.fallbacks] == [("primary", "first"), ("first", "second")]
    assert (primary.calls, first.calls, second.calls, third.calls) == (1, 1, 1, 0)


async def test_the_first_fallback_answers_before_the_second_is_asked(clock: FakeClock) -> None:
    primary = ScriptedBackend(model_id="primary", default=HTTP_500)
    first = ScriptedBackend(model_id="first", default="from first")
    second = ScriptedBackend(model_id="second", default="from second")
    backend, _ = chain(clock, primary, first, second, attempts=1)
    assert (await backend.predict("q")).content == "from first"
    assert second.calls == 0


async def test_a_fallback_answers_after_the_primary_exhausted_its_retries(
    clock: FakeClock,
) -> None:
    primary = ScriptedBackend(model_id="primary", default=HTTP_500)
    backup = ScriptedBackend(model_id="backup", default="from backup")
    events = Events()
    backend, _ = chain(clock, primary, backup, observer=events)
    output = await backend.predict("q")
    assert (output.model_id, primary.calls, backup.calls) == ("backup", 3, 1)
    assert [(m, a) for m, a, _ in events.retries] == [("primary", 1), ("primary", 2)]
    assert events.fallbacks == [("primary", "backup", "ProviderUnavailableError")]


async def test_a_non_retryable_error_does_not_fall_back(clock: FakeClock) -> None:
    primary = ScriptedBackend([ProviderBadRequestError("400")], model_id="primary")
    backup = ScriptedBackend(model_id="backup", default="unused")
    backend, _ = chain(clock, primary, backup)
    with pytest.raises(ProviderBadRequestError):
        await backend.predict("q")
    assert (primary.calls, backup.calls) == (1, 0)


async def test_when_every_model_fails_the_last_error_is_raised(clock: FakeClock) -> None:
    primary = ScriptedBackend(model_id="primary", default=HTTP_500)
    backup = ScriptedBackend(model_id="backup", default=RateLimitedError("429 backup"))
    backend, _ = chain(clock, primary, backup, attempts=1)
    with pytest.raises(RateLimitedError, match="429 backup"):
        await backend.predict("q")


async def test_a_request_cancelled_mid_call_leaves_no_stuck_probe(clock: FakeClock) -> None:
    entered = asyncio.Event()

    async def hang(_: Any) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    provider = ScriptedBackend([HTTP_500] * 5 + [hang], model_id="primary", default="ok")
    backend, breakers = chain(clock, provider)
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await backend.predict("q")
    clock.advance(60)
    task = asyncio.create_task(backend.predict("q"))
    await entered.wait()
    assert breakers["primary"].snapshot().half_open_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breakers["primary"].snapshot().half_open_in_flight == 0
    assert (await backend.predict("q")).content == "ok"
    assert breakers["primary"].state is BreakerState.CLOSED


# --- RetryingBackend -------------------------------------------------------------------------


async def test_retrying_backend_reports_attempts_and_latency(clock: FakeClock) -> None:
    provider = ScriptedBackend([HTTP_500, HTTP_500], default="ok")
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, max_backoff_s=1.0)
    backend = RetryingBackend(provider, policy, clock=clock, rng=random.Random(0))
    output = await backend.predict("q")
    assert output.attempts == 3
    assert output.latency_ms == pytest.approx(sum(clock.sleeps) * 1000)


async def test_retrying_backend_stops_at_the_request_deadline(clock: FakeClock) -> None:
    provider = ScriptedBackend(default=HTTP_500)
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=10.0, max_backoff_s=10.0)

    class TopRng(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    retrying = RetryingBackend(provider, policy, clock=clock, rng=TopRng())
    backend = DeadlineBackend(retrying, 25.0, clock=clock)
    with pytest.raises(ProviderUnavailableError):
        await backend.predict("q")
    assert provider.calls == 3  # t=0, t=10, t=20; a fourth could not start before t=25
    assert clock.sleeps == [10.0, 10.0]


# --- DeadlineBackend -------------------------------------------------------------------------


async def test_the_deadline_really_cancels_a_hanging_call() -> None:
    cancelled = False

    async def hang(_: Any) -> str:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise
        return "never"

    backend = DeadlineBackend(ScriptedBackend([hang], model_id="slow"), 0.005)
    with pytest.raises(DeadlineExceededError, match="'slow'") as info:
        await backend.predict("q")
    assert cancelled
    assert info.value.deadline_s == 0.005


async def test_a_timeout_error_of_the_call_itself_is_not_a_deadline() -> None:
    backend = DeadlineBackend(ScriptedBackend([TimeoutError("socket")]), 30.0)
    with pytest.raises(TimeoutError, match="socket"):
        await backend.predict("q")


async def test_the_deadline_is_visible_inside_and_nested_deadlines_keep_the_earliest(
    clock: FakeClock,
) -> None:
    seen: list[float | None] = []

    def look(_: Any) -> str:
        seen.append(current_deadline())
        return "ok"

    clock.advance(100)
    inner = DeadlineBackend(ScriptedBackend([look, look]), 50.0, clock=clock)
    await DeadlineBackend(inner, 10.0, clock=clock).predict("q")
    await inner.predict("q")
    assert seen == [110.0, 150.0]
    assert current_deadline() is None


def test_a_non_positive_deadline_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="deadline_s"):
        DeadlineBackend(ScriptedBackend(), 0)


# --- wrapper plumbing ------------------------------------------------------------------------


async def test_wrappers_delegate_the_backend_attributes(clock: FakeClock) -> None:
    provider = ScriptedBackend(model_id="m")
    provider.last_prompt_tokens = 12
    wrapper = CircuitBreakerBackend(provider, breaker_for("m", clock))
    assert isinstance(wrapper, ModelBackend)
    assert (wrapper.model_id, wrapper.last_prompt_tokens) == ("m", 12)
    wrapper.program_metadata = {"id": "p"}
    wrapper.last_completion_tokens = 3
    assert provider.program_metadata == {"id": "p"}
    assert provider.last_completion_tokens == 3
    assert wrapper.get_lm_history() == []
    assert repr(wrapper).startswith("CircuitBreakerBackend(ScriptedBackend(")


async def test_fallback_keeps_the_answering_output_untouched_when_the_primary_answers() -> None:
    output = ModelOutput(content="x", model_id="primary", metadata={"k": 1})
    backend = FallbackBackend(ScriptedBackend([output]), [ScriptedBackend(model_id="b")])
    assert await backend.predict("q") is output


async def test_a_failing_request_observer_never_breaks_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RequestObserver):
        def on_retry(
            self, model_id: str, attempt: int, error: BaseException, delay_s: float
        ) -> None:
            raise RuntimeError("bug")

        def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
            raise RuntimeError("bug")

        def on_model_output(self, output: ModelOutput) -> None:
            raise RuntimeError("bug")

    primary = ScriptedBackend(model_id="primary", default=HTTP_500)
    backup = ScriptedBackend(model_id="backup", default="ok")
    events = Events()
    backend, _ = chain(clock, primary, backup, observer=Broken())
    with observing(events):  # the other observer of the request is still told
        assert (await backend.predict("q")).model_id == "backup"
    assert "request observer Broken.on_retry failed" in caplog.text
    assert "request observer Broken.on_fallback failed" in caplog.text
    assert [(f, t) for f, t, _ in events.fallbacks] == [("primary", "backup")]
    assert len(events.retries) == 2


async def test_a_single_model_without_retries_is_just_the_breaker(clock: FakeClock) -> None:
    provider = ScriptedBackend(default="ok")
    backend = build_reliable_backend(
        ReliableModel(provider, breaker_for("m", clock), RetryPolicy(max_attempts=1))
    )
    assert isinstance(backend, CircuitBreakerBackend)
    assert (await backend.predict("q")).content == "ok"
