"""A model call's request scope: the host's DSPy settings seen inside, restored after, and
each concurrent call's own model, usage tracker and scope."""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest
from _model_helpers import MakeManager, model

from llm_server.models._request_scope import current_scope

pytestmark = pytest.mark.anyio


class _Probe(dspy.Module):  # type: ignore[misc]  # dspy is untyped
    """A program that notes the DSPy settings and request scope it runs under, and can wait
    for the other calls to be running too."""

    def __init__(self, waiting: int = 1) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self._barrier = asyncio.Barrier(waiting)

    async def aforward(self, question: str) -> dspy.Prediction:
        seen = {
            "question": question,
            "lm": dspy.settings.lm,
            "adapter": dspy.settings.adapter,
            "callbacks": dspy.settings.callbacks,
            "tracker": dspy.settings.usage_tracker,
            "scope": current_scope.get(),
        }
        await self._barrier.wait()  # every call is inside its scope at once
        seen["tracker after"] = dspy.settings.usage_tracker
        seen["scope after"] = current_scope.get()
        self.seen.append(seen)
        return dspy.Prediction(answer=f"echo {question}")


async def test_the_hosts_settings_are_seen_inside_and_restored_after(
    make_manager: MakeManager,
) -> None:
    manager = make_manager({"m": model("openai", "auto")}, otel_enabled=False)
    probe = _Probe()
    backend = manager.single_attempt_backend(probe, "m")
    host_lm, host_adapter, callbacks = dspy.LM("openai/host"), dspy.JSONAdapter(), [object()]
    with dspy.context(lm=host_lm, adapter=host_adapter, callbacks=callbacks):
        await backend.predict({"question": "q"})
        [seen] = probe.seen
        assert seen["lm"] is backend.lm
        assert seen["adapter"] is host_adapter  # the host's choice, not the quiet default
        assert seen["callbacks"] is callbacks
        assert seen["tracker"] is seen["scope"].tracker
        assert (dspy.settings.lm, dspy.settings.adapter) == (host_lm, host_adapter)
        assert dspy.settings.usage_tracker is None
    assert dspy.settings.lm is None
    assert current_scope.get() is None


async def test_concurrent_calls_each_run_in_their_own_scope(make_manager: MakeManager) -> None:
    manager = make_manager({"m": model("openai", "auto")}, otel_enabled=False)
    probe = _Probe(waiting=8)
    backend = manager.single_attempt_backend(probe, "m")
    await asyncio.gather(*(backend.predict({"question": f"q{i}"}) for i in range(8)))
    scopes = {id(seen["scope"]) for seen in probe.seen}
    trackers = {id(seen["tracker"]) for seen in probe.seen}
    assert len(scopes) == len(trackers) == 8
    for seen in probe.seen:
        assert seen["scope after"] is seen["scope"]
        assert seen["tracker after"] is seen["tracker"] is seen["scope"].tracker
