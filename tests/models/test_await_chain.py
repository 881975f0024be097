"""What a model call's await chain holds: the layers that act on the call, and no forwarders.

Every coroutine frame between the caller and the network is resumed on each of the call's
network waits, on every request. So a layer that would only forward the call (the span layer
with telemetry off, the budget layer with no tenant or budget, ``CircuitBreaker.call`` under
the breaker layer, a separate frame per attempt) leaves no frame of its own on the chain,
while the layers that do something (deadline, retries, breaker, the span with telemetry on)
stay in their order.
"""

from __future__ import annotations

import sys

import dspy
import pytest
from _model_helpers import MakeManager, model

from llm_server.core.budgets import Budget, tenant_scope

pytestmark = pytest.mark.anyio


class _Probe(dspy.Module):  # type: ignore[misc]  # dspy is untyped
    """A program that answers at once and notes the frames that awaited it, innermost first."""

    def __init__(self) -> None:
        super().__init__()
        self.chain: list[str] = []

    async def aforward(self, question: str) -> dspy.Prediction:
        self.chain.clear()
        frame = sys._getframe(1)
        while frame is not None:
            self.chain.append(frame.f_code.co_qualname)
            frame = frame.f_back
        return dspy.Prediction(answer=f"echo {question}")


def _ours(chain: list[str]) -> list[str]:
    """The library's layers in ``chain``, outermost first."""
    layers = (
        "InstrumentedBackend.predict",
        "BudgetBackend.predict",
        "BudgetBackend._budgeted",
        "DeadlineBackend.predict",
        "RetryingBackend.predict",
        "CircuitBreakerBackend.predict",
        "CircuitBreaker.call",
        "DSPyBackend.predict",
        "DSPyBackend._attempt",
    )
    return [name for name in reversed(chain) if name in layers]


async def test_with_telemetry_off_only_the_acting_layers_are_on_the_chain(
    make_manager: MakeManager,
) -> None:
    manager = make_manager({"m": model("openai", "auto")}, otel_enabled=False)
    probe = _Probe()
    output = await manager.reliable_backend(probe, "m").predict({"question": "q"})
    assert output.content.answer == "echo q"
    assert _ours(probe.chain) == [
        "DeadlineBackend.predict",
        "RetryingBackend.predict",
        "CircuitBreakerBackend.predict",
        "DSPyBackend.predict",
    ]


async def test_the_span_and_a_tenants_budget_add_their_layers(make_manager: MakeManager) -> None:
    manager = make_manager({"m": model("openai", "auto")}, otel_enabled=True)
    manager.budgets.set_budget("acme", "day", Budget(requests=10))
    probe = _Probe()
    backend = manager.reliable_backend(probe, "m")
    with tenant_scope("acme"):
        await backend.predict({"question": "q"})
    assert _ours(probe.chain) == [
        "InstrumentedBackend.predict",
        "BudgetBackend._budgeted",
        "DeadlineBackend.predict",
        "RetryingBackend.predict",
        "CircuitBreakerBackend.predict",
        "DSPyBackend.predict",
    ]
    used, _ = (await manager.budgets.usage("acme"))["day"]
    assert used.requests == 1  # charged: the layer acted
