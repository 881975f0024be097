"""The per-request scope a backend runs a program in: the request's model, adapter and calls.

Each :class:`~llm_server.models._managed_lm.ManagedLM` call reports its record to the
:class:`RequestScope` of the request that made it (carried in a contextvar), never to a
shared history, so concurrent requests never see each other's calls. DSPy's per-call
warnings of a request are kept here too, for the backend to log with the request's ids.
"""

from __future__ import annotations

from llm_server._offline import ensure_offline

ensure_offline()

import logging  # noqa: E402 -- after ensure_offline() on purpose
import threading  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from contextlib import AbstractContextManager  # noqa: E402
from contextvars import ContextVar, Token  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from types import TracebackType  # noqa: E402
from typing import Any  # noqa: E402

import dspy  # noqa: E402
from dspy.utils.usage_tracker import UsageTracker  # noqa: E402

__all__ = [
    "CallTracker",
    "RequestScope",
    "SystemMessages",
    "adapter_named",
    "current_scope",
    "entry_messages",
    "request_scope",
    "sync_call",
]

current_scope: ContextVar[RequestScope | None] = ContextVar("llm_server_lm_scope", default=None)
# the in-flight record of the synchronous LM call running in this thread (see CallTracker)
sync_call: ContextVar[list[dict[str, Any]] | None] = ContextVar(
    "llm_server_lm_sync_call", default=None
)


class CallTracker(UsageTracker):  # type: ignore[misc]  # dspy is untyped
    """A usage tracker that also remembers calls whose usage was empty.

    DSPy's tracker drops empty usage, so "the provider reported none" would look like "no call
    was made". DSPy calls ``add_usage`` for every call that reached the provider (never for a
    cache hit), so ``billed`` has one item per billed call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.billed: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        """Held while a synchronous call's usage is recorded, and while a request that gave up
        takes stock (:meth:`close`): each call is counted once, exact or cut."""
        self.closed = False

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        """Record one billed call's usage (possibly empty)."""
        with self.lock:
            if self.closed:
                return  # the request gave up: this call was counted as cut
            flat = self._flatten_usage_entry(dict(usage_entry or {}))
            self.billed.append(flat)
            in_flight = sync_call.get()
            if in_flight is not None:
                in_flight.clear()  # no longer cut: its usage is here
        if flat:  # what UsageTracker.add_usage keeps, flattened once (~2 us per call)
            self.usage_data[lm].append(dict(flat))

    def close(self) -> None:
        """Ignore the usage of calls that end from now on (call with :attr:`lock` held)."""
        self.closed = True


@dataclass(slots=True)
class RequestScope:
    """What one request's LM calls reported.

    Attributes:
        entries: One record per LM call (cache hits included), as DSPy builds for its history.
        tracker: Usage of the calls that reached the provider.
        in_flight: The messages of each call that started; emptied when the call finishes,
            so a call cancelled on its way (a deadline, a client gone) keeps them.
        connection_wait_s: Seconds the calls waited for a free connection of the model's
            pool (DSPy's native engine only).
        connection_waits: How many connection waits were timed (0: not measured).
        max_tokens: The ``max_tokens`` of this request's calls, when a re-ask raised it.
        dspy_warnings: What DSPy warned about this request's calls (its truncation warning),
            kept here instead of printed: the backend logs it with the request's ids.
        stream_refusals: The refusal text a streamed call's chunks carried, by the call's
            index in ``entries`` (neither engine keeps it: :mod:`._refusals`).
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    tracker: CallTracker = field(default_factory=CallTracker)
    in_flight: list[list[dict[str, Any]]] = field(default_factory=list)
    connection_wait_s: float = 0.0
    connection_waits: int = 0
    max_tokens: int | None = None
    dspy_warnings: list[str] = field(default_factory=list)
    stream_refusals: dict[int, str] = field(default_factory=dict)

    def call_started(self, sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record a call about to leave with the messages ``sent`` (:func:`entry_messages`);
        returns ``sent``, to be cleared when the call finishes."""
        self.in_flight.append(sent)
        return sent

    def cut_calls(self) -> list[list[dict[str, Any]]]:
        """The messages of the calls that left and never finished (cancelled)."""
        return [messages for messages in self.in_flight if messages]


class SystemMessages:
    """An adapter's ``format_system_message``, kept per signature instead of rebuilt per call.

    DSPy's adapters build the system message (the fields' descriptions, the answer's structure,
    the instructions) on every call: ~50 us of CPU for a one-field signature, three pydantic
    ``TypeAdapter`` builds among it, though it depends only on the signature. Signature classes
    are not changed in place except for their instructions (``Signature.instructions = ...``
    sets ``__doc__``), so a kept message is used while its signature's ``__doc__`` is the one
    it was built with (one whose ``__doc__`` changed while it was built is not kept). DSPy's own
    ways to change fields (``with_updated_fields``, ``insert``, ``append``, ``delete``) make new
    classes; a field's ``FieldInfo`` edited in place on a signature already used is not seen.
    Signatures are held weakly: one an optimizer made and dropped goes with its message.
    """

    __slots__ = ("_build", "_kept")

    def __init__(self, build: Callable[[Any], str]) -> None:
        self._build = build
        self._kept: weakref.WeakKeyDictionary[Any, tuple[object, str]] = weakref.WeakKeyDictionary()

    def __call__(self, signature: Any) -> str:
        doc = getattr(signature, "__doc__", None)
        try:
            kept = self._kept.get(signature)
        except TypeError:  # not weakly referenceable: built every time, as DSPy does
            return self._build(signature)
        if kept is not None and kept[0] == doc:
            return kept[1]
        message = self._build(signature)
        if getattr(signature, "__doc__", None) == doc:  # not changed while it was built
            self._kept[signature] = (doc, message)
        return message

    def __reduce__(self) -> tuple[Any, ...]:
        # deep-copied or pickled with its adapter: rebuilt for the copy, never carried along
        # (a shallow copy of the adapter shares them: they depend on nothing it holds)
        return (SystemMessages, (self._build,))


def _kept_system_messages(adapter: Any) -> Any:
    """``adapter`` (one of the library's own) with its system messages kept per signature
    (an instance attribute: the class, which DSPy's stream listeners read by name, is
    unchanged)."""
    adapter.format_system_message = SystemMessages(adapter.format_system_message)
    return adapter


_QUIET_ADAPTER = _kept_system_messages(dspy.ChatAdapter(use_json_adapter_fallback=False))


_ADAPTERS: dict[str, Any] = {}


def adapter_named(name: str) -> Any:
    """The shared DSPy adapter for ``chat``, ``json`` or ``xml`` (no silent JSON fallback;
    system messages kept per signature, :class:`SystemMessages`)."""
    adapter = _ADAPTERS.get(name)
    if adapter is None:
        factory = {
            "chat": lambda: dspy.ChatAdapter(use_json_adapter_fallback=False),
            "json": dspy.JSONAdapter,
            "xml": lambda: dspy.XMLAdapter(use_json_adapter_fallback=False),
        }[name]
        adapter = _ADAPTERS[name] = _kept_system_messages(factory())
    return adapter


class _KeepDSPyWarnings(logging.Filter):
    """Keeps DSPy's per-call warnings (``LM response was truncated ...``) of a request's calls
    in its :class:`RequestScope` instead of DSPy's plain-text handler: the backend logs them
    with the request's ids. Records outside a request scope pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = current_scope.get()
        if scope is None or record.levelno < logging.WARNING:
            return True
        scope.dspy_warnings.append(record.getMessage())
        return False


# the DSPy loggers that warn about one call (a cut answer, the JSON adapter's schema)
_PER_CALL_LOGGERS = ("dspy.clients.lm", "dspy.adapters.json_adapter")


def _keep_dspy_warnings() -> None:
    for name in _PER_CALL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KeepDSPyWarnings) for f in logger.filters):
            logger.addFilter(_KeepDSPyWarnings())


_keep_dspy_warnings()


class request_scope:  # noqa: N801 -- used as a function: ``with request_scope(lm) as scope``
    """Run the body with ``lm`` as the request's model, isolated usage, and no shared history.

    Everything is set with ``dspy.context`` (a contextvar), never ``dspy.configure``: this is
    safe from any task or thread. DSPy's adapter fallback (a silent second, billed call with
    JSONAdapter after a parse failure) is turned off unless the host configured an adapter.
    ``max_tokens`` overrides the LM's for the calls made inside (a re-ask after a cut answer).

    A class rather than a ``@contextmanager`` generator: it is entered on every model call,
    and a generator-based context manager costs a generator and two resumptions more.
    """

    __slots__ = ("_dspy_context", "_parent", "_scope", "_token")

    def __init__(
        self, lm: dspy.LM, adapter: str | None = None, *, max_tokens: int | None = None
    ) -> None:
        scope = self._scope = RequestScope(max_tokens=max_tokens)
        # Settings read by item: DSPy's settings answer from __getattr__, so an attribute read
        # first fails the ordinary lookup (a raised and caught AttributeError, ~0.4 us of the
        # ~0.6); the item read asks __getattr__ directly. Two reads on every model call.
        settings = dspy.settings
        self._parent = settings["usage_tracker"]
        overrides: dict[str, Any] = {
            "lm": lm,
            "usage_tracker": scope.tracker,
            # finalize() only calls lm.update_history when history is on; ManagedLM stores
            # nothing.
            "disable_history": False,
            "trace": [],
            "max_trace_size": 0,
        }
        if adapter is not None:  # the program's or the model's own choice
            overrides["adapter"] = adapter_named(adapter)
        elif settings["adapter"] is None:
            overrides["adapter"] = _QUIET_ADAPTER
        self._dspy_context: AbstractContextManager[None] = dspy.context(**overrides)
        self._token: Token[RequestScope | None] | None = None

    def __enter__(self) -> RequestScope:
        self._token = current_scope.set(self._scope)
        try:
            self._dspy_context.__enter__()
        except BaseException:
            current_scope.reset(self._token)
            raise
        return self._scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._dspy_context.__exit__(exc_type, exc, tb)
        finally:
            assert self._token is not None
            current_scope.reset(self._token)
            parent = self._parent
            if parent is not None:  # as dspy.track_usage() does when nested
                for name, entries in self._scope.tracker.usage_data.items():
                    parent.usage_data[name].extend(entries)


def entry_messages(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of one call record (empty when DSPy recorded none)."""
    messages = entry.get("messages")
    if isinstance(messages, list):
        return [m for m in messages if isinstance(m, dict)]
    prompt = entry.get("prompt")
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []
