"""``LocalProvider``: a real OpenAI- and Anthropic-compatible HTTP server for tests.

The server runs on its own event loop in a background thread, so it serves sync code, async
tests in the same process, and DSPy/LiteLLM/httpx clients alike, and a ``hang`` fault never
blocks the caller's loop. The documentation's testing guide ("Appendix: api_base conventions")
gives the ``api_base`` each DSPy engine needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeAlias

from llm_server.core.errors import ConfigurationError
from llm_server.testing._provider_faults import FaultKind, FaultRule, RuleBook
from llm_server.testing._provider_handler import Responder
from llm_server.testing._provider_http import HttpConnection, HttpRequest, ProtocolViolationError
from llm_server.testing._provider_records import RecordedRequest
from llm_server.testing._provider_replies import RawReply, ReplyValue

__all__ = ["FaultKind", "FaultRule", "LocalProvider", "RawReply", "RecordedRequest", "Reply"]

_log = logging.getLogger(__name__)
_MAX_HEAD_BYTES: Final = 1 << 20
_START_TIMEOUT_S: Final = 10.0
_STOP_GRACE_S: Final = 2.0

Reply: TypeAlias = ReplyValue | Callable[[RecordedRequest], ReplyValue | Awaitable[ReplyValue]]
"""What to answer: a string for every output field, a mapping field -> value, a
:class:`RawReply` sent verbatim, or a callable given the :class:`RecordedRequest` that returns
one of those (it may be async)."""


class LocalProvider:
    """An OpenAI/Anthropic-compatible server on 127.0.0.1 that answers in DSPy's format.

    It answers ``POST .../chat/completions`` (OpenAI, JSON or SSE) and ``POST .../messages``
    (Anthropic, JSON or SSE) under any prefix, so every ``api_base`` convention of DSPy's
    engines reaches it, plus ``GET .../models``. Each output field the prompt asks for gets the
    scripted value, or by default ``"echo: <input values>"`` so that concurrent callers can
    tell their answers apart. Usage is counted with :mod:`llm_server.core.tokens`.

    Example::

        with LocalProvider() as provider:
            lm = dspy.LM("openai/gpt-4o-mini", api_base=provider.openai_api_base,
                         api_key="test", cache=False, num_retries=0)
            provider.add_fault("rate_limit", first=1, retry_after_s=2)

    Args:
        host: Interface to bind.
        port: Port to bind; ``0`` picks a free one.
        reply: Default reply for every model (see :data:`Reply`); ``None`` echoes.
        latency_s: Seconds added before every answer.
        usage: Whether responses carry a ``usage`` block (``False`` omits it entirely).
        seed: Seed of the RNG behind ``probability`` rules.
        max_recorded: How many recent requests ``requests`` keeps (``None``: all).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reply: Reply | None = None,
        latency_s: float = 0.0,
        usage: bool = True,
        seed: int | None = 0,
        max_recorded: int | None = 10_000,
    ) -> None:
        self.host = host
        self.latency_s = latency_s
        """Seconds added before every answer (may be changed while running)."""
        self.usage = usage
        """Whether responses carry a ``usage`` block (may be changed while running)."""
        self.chunk_delay_s = 0.0
        """Seconds between the events of a streamed answer (pacing, as a real model's)."""
        self.cut_streams_after: int | None = None
        """Close a streamed answer's connection abruptly after this many events (a fault in
        the middle of a stream); ``None``: never. The reset discards whatever the client has
        not read yet; set :attr:`chunk_delay_s` too for the events before the cut to arrive
        (the cut comes one pacing delay after the last of them)."""
        self.billed: list[tuple[int, int]] = []
        """``(prompt_tokens, completion_tokens)`` of every answer sent with a ``usage`` block,
        in order: what the provider billed (cleared by :meth:`clear`)."""
        self.stream_disconnects: list[float] = []
        """``time.monotonic()`` of each streamed answer whose client went away before its end."""
        self._requested_port = port
        self._scripts: Mapping[str | None, Reply] = {} if reply is None else {None: reply}
        self._rules = RuleBook(seed=seed)
        self._records: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._counter = itertools.count(1)
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._responder = Responder(self)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is bound."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._run, args=(loop, ready, failure), name="LocalProvider", daemon=True
            )
            thread.start()
            if not ready.wait(_START_TIMEOUT_S) or failure:
                thread.join(_STOP_GRACE_S)
                raise ConfigurationError(
                    f"LocalProvider could not listen on {self.host}:{self._requested_port}"
                ) from (failure[0] if failure else None)
            self._thread, self._loop = thread, loop
        return self

    def stop(self) -> None:
        """Stop serving: in-flight (even hanging) requests are cut off. Idempotent."""
        with self._lifecycle:
            thread, loop, stopping = self._thread, self._loop, self._stopping
            if thread is None or loop is None or stopping is None:
                return
            loop.call_soon_threadsafe(stopping.set)
            thread.join(_STOP_GRACE_S * 2)
            self._thread = self._loop = self._stopping = None
            self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.stop)

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._port is not None

    @property
    def open_connections(self) -> int:
        """How many client connections are open now (kept-alive ones included): a client that
        closed its pool leaves none behind."""
        return len(self._connections)

    @property
    def port(self) -> int:
        """The bound port."""
        if self._port is None:
            raise ConfigurationError("LocalProvider is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_api_base(self) -> str:
        """``base_url + "/v1"``: the ``api_base`` for ``openai/...`` models on both engines."""
        return self.base_url + "/v1"

    @property
    def anthropic_api_base(self) -> str:
        """``base_url + "/v1"``, what DSPy's own engine needs for ``anthropic/...`` models.

        LiteLLM appends ``/v1/messages`` to it (``/v1/v1/messages``), which this provider also
        answers; the root (``base_url``) is LiteLLM's own convention.
        """
        return self.base_url + "/v1"

    # --- scripting and faults ----------------------------------------------------------------

    def script(self, *, reply: Reply | None, model: str | None = None) -> None:
        """Set (or with ``reply=None`` remove) the reply for ``model``, or the default one.

        Args:
            reply: See :data:`Reply`.
            model: Model name as sent (a provider prefix such as ``openai/`` is ignored);
                ``None`` sets the default for models without a script of their own.
        """
        scripts = dict(self._scripts)  # copy-on-write: the server thread reads without a lock
        if reply is None:
            scripts.pop(model, None)
        else:
            scripts[model] = reply
        self._scripts = scripts

    @property
    def scripted_models(self) -> tuple[str, ...]:
        """Model names with a script of their own (listed by ``GET /v1/models``)."""
        return tuple(name for name in self._scripts if name is not None)

    def reply_for(self, model: str | None) -> Reply | None:
        """The scripted reply that applies to ``model`` (``None``: the default echo)."""
        scripts = self._scripts
        if model is not None:
            if model in scripts:
                return scripts[model]
            for key, reply in scripts.items():
                if key is not None and key.endswith("/" + model):
                    return reply
        return scripts.get(None)

    def add_fault(
        self,
        fault: FaultKind | int,
        *,
        latency_s: float = 0.0,
        model: str | None = None,
        path: str | None = None,
        nth: int | None = None,
        first: int | None = None,
        probability: float | None = None,
        retry_after_s: float | None = None,
        message: str | None = None,
    ) -> FaultRule:
        """Make matching requests fail; see :class:`FaultRule` for the matching options.

        Returns:
            The rule, for :meth:`remove_rule` and :meth:`fired`.
        """
        return self.add_rule(
            FaultRule(
                fault=fault,
                latency_s=latency_s,
                model=model,
                path=path,
                nth=nth,
                first=first,
                probability=probability,
                retry_after_s=retry_after_s,
                message=message,
            )
        )

    def add_latency(
        self,
        seconds: float,
        *,
        model: str | None = None,
        path: str | None = None,
        nth: int | None = None,
        first: int | None = None,
        probability: float | None = None,
    ) -> FaultRule:
        """Delay matching requests by ``seconds`` (on top of ``latency_s``)."""
        rule = FaultRule(
            latency_s=seconds, model=model, path=path, nth=nth, first=first, probability=probability
        )
        return self.add_rule(rule)

    def add_rule(self, rule: FaultRule) -> FaultRule:
        """Add a prepared :class:`FaultRule` (evaluated after the rules added before it)."""
        return self._rules.add(rule)

    def remove_rule(self, rule: FaultRule) -> None:
        """Remove one rule."""
        self._rules.remove(rule)

    def clear_faults(self) -> None:
        """Remove every latency and fault rule."""
        self._rules.clear()

    def fired(self, rule: FaultRule) -> int:
        """How many requests ``rule`` has fired on."""
        return self._rules.fired(rule)

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The current rules, in evaluation order."""
        return tuple(self._rules.rules)

    def _decide(self, model: str | None, path: str) -> tuple[float, FaultRule | None]:
        """Latency and fault rule for a request (counts the request against the rules)."""
        decision = self._rules.decide(model, path)
        return self.latency_s + decision.latency_s, decision.rule

    # --- records ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first (at most ``max_recorded``)."""
        return list(self._records)

    def clear(self) -> None:
        """Forget the recorded requests and what was billed."""
        self._records.clear()
        self.billed.clear()

    @property
    def billed_tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens billed so far (the sums of :attr:`billed`)."""
        billed = list(self.billed)
        return sum(p for p, _ in billed), sum(c for _, c in billed)

    def _record(self, request: HttpRequest) -> RecordedRequest:
        """Record ``request`` (called by the server for every request it reads)."""
        body: Any = None
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                body = None
        model = body.get("model") if isinstance(body, dict) else None
        record = RecordedRequest(
            index=next(self._counter),
            method=request.method,
            path=request.path,
            headers=MappingProxyType(dict(request.headers)),
            body=body,
            model=model if isinstance(model, str) else None,
            timestamp=time.time(),
        )
        self._records.append(record)
        return record

    # --- server thread -----------------------------------------------------------------------

    def _run(
        self, loop: asyncio.AbstractEventLoop, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported to start() through `failure`
            failure.append(exc)
            ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._on_connect, self.host, self._requested_port, limit=_MAX_HEAD_BYTES, backlog=2048
        )
        self._port = int(server.sockets[0].getsockname()[1])
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=_STOP_GRACE_S)
            await asyncio.sleep(0)  # let closed transports finish their callbacks

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # stream callbacks always run inside a task
        self._connections.add(task)
        connection = HttpConnection(reader, writer)
        try:
            while not connection.closed:
                request = await connection.read_request()
                if request is None or not await self._responder.handle(connection, request):
                    break
        except ProtocolViolationError as exc:
            await _answer_quietly(connection, 400, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the provider is stopping
        except Exception:  # a bug in the provider: answer 500 instead of dropping the socket
            _log.exception("LocalProvider failed while handling a request")
            await _answer_quietly(connection, 500, "local provider internal error")
        finally:
            connection.close()
            self._connections.discard(task)


async def _answer_quietly(connection: HttpConnection, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    with contextlib.suppress(ConnectionError, RuntimeError):
        await connection.respond(status, body.encode(), keep_alive=False)
