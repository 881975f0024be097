"""ScriptedBackend: a ModelBackend that answers, fails or waits from a script."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from llm_server.core.model_interfaces import ModelOutput

__all__ = ["ScriptExhaustedError", "ScriptedBackend"]

_NO_DEFAULT = object()


class ScriptExhaustedError(AssertionError):
    """A :class:`ScriptedBackend` was called more often than its script allows.

    An ``AssertionError``, because it means the test's expectations were wrong.
    """


class ScriptedBackend:
    """A :class:`~llm_server.core.protocols.ModelBackend` whose answers are scripted.

    Each call to :meth:`predict` takes the next item of ``script``:

    - a :class:`~llm_server.core.model_interfaces.ModelOutput` is returned as it is;
    - an exception instance or class is raised (so ``ProviderUnavailableError("500")``
      scripts a provider failure);
    - a callable is called with the input; what it returns (awaited if awaitable) is used as
      the answer, and what it raises is raised: use one to wait on an ``asyncio.Event``, to
      hang, or to check the input;
    - any other value becomes ``ModelOutput(content=value, model_id=model_id)``.

    When the script runs out, ``default`` answers every further call; without a default an
    extra call raises :class:`ScriptExhaustedError`::

        backend = ScriptedBackend(
            [ProviderUnavailableError("503"), "hello"], model_id="gpt-4o-mini"
        )
        assert (await backend.predict("hi")).content == "hello" ...

    Args:
        script: The answers, in order.
        model_id: The backend's model id (also set on the outputs it makes).
        default: The answer once the script is used up.
        delay_s: Seconds to wait before each answer (through ``sleep``).
        sleep: The sleep used for ``delay_s``; pass ``FakeClock.sleep`` to wait in fake time.

    Attributes:
        calls: How many times :meth:`predict` was called.
        inputs: The inputs, in order.
        in_flight: Calls running now.
        max_in_flight: The most calls that ever ran at once.
    """

    def __init__(
        self,
        script: Iterable[Any] = (),
        *,
        model_id: str = "scripted",
        default: Any = _NO_DEFAULT,
        delay_s: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.model_id = model_id
        self.program_metadata: Any = None
        self.last_prompt_tokens: int | None = None
        self.last_completion_tokens: int | None = None
        self._script: deque[Any] = deque(script)
        self._default = default
        self._delay_s = delay_s
        self._sleep = sleep or asyncio.sleep
        self.calls = 0
        self.inputs: list[Any] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def extend(self, items: Iterable[Any]) -> None:
        """Append items to the script."""
        self._script.extend(items)

    @property
    def remaining(self) -> int:
        """Script items not used yet."""
        return len(self._script)

    async def predict(self, input: Any) -> ModelOutput:
        """Answer with the next script item (see the class docstring)."""
        self.calls += 1
        self.inputs.append(input)
        if self._script:
            item = self._script.popleft()
        elif self._default is not _NO_DEFAULT:
            item = self._default
        else:
            raise ScriptExhaustedError(
                f"ScriptedBackend {self.model_id!r} was called {self.calls} times; "
                "its script is used up and it has no default"
            )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._delay_s > 0:
                await self._sleep(self._delay_s)
            return await self._answer(item, input)
        finally:
            self.in_flight -= 1

    async def _answer(self, item: Any, input: Any) -> ModelOutput:
        if isinstance(item, BaseException) or (
            isinstance(item, type) and issubclass(item, BaseException)
        ):
            raise item
        if callable(item) and not isinstance(item, ModelOutput):
            item = item(input)
            if inspect.isawaitable(item):
                item = await item
        if isinstance(item, ModelOutput):
            return item
        return ModelOutput(content=item, model_id=self.model_id)

    def get_lm_history(self) -> list[Any]:
        """Scripted backends keep no history."""
        return []

    def __repr__(self) -> str:
        return f"ScriptedBackend(model_id={self.model_id!r}, calls={self.calls})"
