"""The test doubles shipped for users: FakeClock and ScriptedBackend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_server.core.clock import SYSTEM_CLOCK, Clock
from llm_server.core.errors import ProviderUnavailableError
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.protocols import ModelBackend
from llm_server.testing import FakeClock, ScriptedBackend, ScriptExhaustedError

pytestmark = pytest.mark.anyio


def test_both_clocks_are_clocks() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert repr(SYSTEM_CLOCK) == "SystemClock()"


async def test_system_clock_is_monotonic_and_sleeps_for_real() -> None:
    before = SYSTEM_CLOCK.monotonic()
    await SYSTEM_CLOCK.sleep(0.001)
    assert SYSTEM_CLOCK.monotonic() - before >= 0.001


async def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=5.0)
    assert clock.monotonic() == 5.0
    clock.advance(2.5)
    clock.advance(-10)  # ignored: time never goes back
    assert clock.monotonic() == 7.5
    await clock.sleep(60)
    assert clock.monotonic() == 67.5
    assert clock.sleeps == [60]
    assert repr(clock) == "FakeClock(now=67.5)"


async def test_fake_sleep_lets_other_tasks_run() -> None:
    clock = FakeClock()
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(1)
    order.append("after sleep")
    await task
    assert order == ["other", "after sleep"]


async def test_scripted_backend_answers_in_order() -> None:
    output = ModelOutput(content="exact", model_id="other")

    async def echo(prompt: Any) -> str:
        return f"echo {prompt}"

    backend = ScriptedBackend(
        ["plain", output, echo, lambda p: p.upper(), ProviderUnavailableError("500"), KeyError],
        model_id="m",
    )
    assert isinstance(backend, ModelBackend)
    first = await backend.predict("a")
    assert (first.content, first.model_id) == ("plain", "m")
    assert await backend.predict("b") is output
    assert (await backend.predict("c")).content == "echo c"
    assert (await backend.predict("d")).content == "D"
    with pytest.raises(ProviderUnavailableError):
        await backend.predict("e")
    with pytest.raises(KeyError):
        await backend.predict("f")
    assert backend.calls == 6
    assert backend.inputs == ["a", "b", "c", "d", "e", "f"]
    assert backend.remaining == 0


async def test_scripted_backend_uses_the_default_then_complains_without_one() -> None:
    with_default = ScriptedBackend(["first"], default="again")
    assert [(await with_default.predict(i)).content for i in range(3)] == [
        "first",
        "again",
        "again",
    ]
    without = ScriptedBackend(["only"], model_id="m")
    await without.predict("x")
    with pytest.raises(ScriptExhaustedError, match="'m' was called 2 times"):
        await without.predict("x")
    without.extend(["more"])
    assert (await without.predict("x")).content == "more"


async def test_scripted_backend_delays_through_the_given_sleep() -> None:
    clock = FakeClock()
    backend = ScriptedBackend(default="ok", delay_s=2.0, sleep=clock.sleep)
    await asyncio.gather(*(backend.predict(i) for i in range(3)))
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert backend.max_in_flight == 3
    assert backend.in_flight == 0


async def test_scripted_backend_tracks_calls_in_flight() -> None:
    gate = asyncio.Event()

    async def wait(_: Any) -> str:
        await gate.wait()
        return "done"

    backend = ScriptedBackend([wait, wait])
    tasks = [asyncio.create_task(backend.predict(i)) for i in range(2)]
    await asyncio.sleep(0)
    assert backend.in_flight == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert (backend.in_flight, backend.max_in_flight) == (0, 2)
    assert backend.get_lm_history() == []
    assert repr(backend) == "ScriptedBackend(model_id='scripted', calls=2)"
