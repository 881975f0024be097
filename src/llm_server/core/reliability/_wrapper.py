"""``BackendWrapper``: the base of every cross-cutting layer around a model backend."""

from __future__ import annotations

from typing import Any

from llm_server.core.protocols import ModelBackend

__all__ = ["BackendWrapper"]


class BackendWrapper:
    """Base of a ``ModelBackend`` that wraps another one.

    It forwards every attribute of the :class:`~llm_server.core.protocols.ModelBackend`
    protocol to the wrapped backend; a subclass only writes ``predict``. Tracing, metrics,
    circuit breaking, retries, deadlines and fallbacks are all such wrappers.

    Args:
        backend: The backend to wrap.
    """

    def __init__(self, backend: ModelBackend) -> None:
        self._backend = backend

    @property
    def wrapped(self) -> ModelBackend:
        """The backend this wrapper calls."""
        return self._backend

    @property
    def model_id(self) -> str:
        """The wrapped backend's model id."""
        return self._backend.model_id

    @model_id.setter
    def model_id(self, value: str) -> None:
        self._backend.model_id = value

    @property
    def program_metadata(self) -> Any:
        """The wrapped backend's program metadata."""
        return self._backend.program_metadata

    @program_metadata.setter
    def program_metadata(self, value: Any) -> None:
        self._backend.program_metadata = value

    @property
    def last_prompt_tokens(self) -> int | None:
        """The wrapped backend's last prompt tokens (informational only)."""
        return self._backend.last_prompt_tokens

    @last_prompt_tokens.setter
    def last_prompt_tokens(self, value: int | None) -> None:
        self._backend.last_prompt_tokens = value

    @property
    def last_completion_tokens(self) -> int | None:
        """The wrapped backend's last completion tokens (informational only)."""
        return self._backend.last_completion_tokens

    @last_completion_tokens.setter
    def last_completion_tokens(self, value: int | None) -> None:
        self._backend.last_completion_tokens = value

    def get_lm_history(self) -> list[Any]:
        """The wrapped backend's history."""
        return self._backend.get_lm_history()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._backend!r})"
