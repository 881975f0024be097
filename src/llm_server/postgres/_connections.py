"""Connections that cannot hang: the settings every connection gets, and a client-side deadline.

The server's own limits (``statement_timeout``, ``lock_timeout``) end a slow statement on a
server that still answers. They do nothing when the path goes silent (a dead peer, a proxy
that stopped forwarding): the client then waits for a reply that never comes. TCP keepalives
and ``tcp_user_timeout`` notice a peer that stops acknowledging packets, in seconds rather than
the kernel's ~15 minutes; a peer whose kernel still acknowledges (a hung proxy or server
process) is only noticed by a deadline of the client's own: :func:`bounded` shuts the
connection's socket down when an operation outlives its time, which wakes the waiting thread
with an error, and the connection is discarded.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["DeadlineExceededError", "bounded", "connection_settings", "display_url"]


class DeadlineExceededError(Exception):
    """An operation on PostgreSQL had no answer within its time (the connection was cut)."""


def display_url(url: str) -> str:
    """``scheme://host:port/db`` of a URL, for messages: no user, password or parameters."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "<unparseable URL>"


def connection_settings(url: str, *, timeout_s: float) -> dict[str, Any]:
    """The connection parameters: the URL's own, plus timeouts where the URL sets none.

    ``statement_timeout`` is ``timeout_s`` and ``lock_timeout`` half of it (added to any
    ``options`` in the URL); ``tcp_user_timeout`` is ``timeout_s``; keepalives start after
    5 s idle and give up after 3 unanswered probes 2 s apart.
    """
    params: dict[str, Any] = conninfo_to_dict(url)
    timeout_ms = max(1, round(timeout_s * 1000))
    server_limits = f"-c statement_timeout={timeout_ms} -c lock_timeout={max(1, timeout_ms // 2)}"
    existing = params.get("options")
    params["options"] = f"{existing} {server_limits}" if existing else server_limits
    defaults: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(min(timeout_s, 5.0))),  # libpq: whole seconds, >= 2
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": timeout_ms,
    }
    for key, value in defaults.items():
        params.setdefault(key, value)
    return params


@contextlib.contextmanager
def bounded(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Run the ``with`` block's operations on ``conn`` for at most ``seconds``.

    When the time runs out, the connection's socket is shut down: the thread waiting on it
    wakes with an error, raised here as :class:`DeadlineExceededError`, and ``conn`` is closed so no
    pool reuses it.

    Raises:
        DeadlineExceededError: The block outlived ``seconds`` (or ``seconds`` is not positive).
    """
    if seconds <= 0:
        raise DeadlineExceededError("no time left")
    # Our own descriptor of the socket: if libpq closes its descriptor meanwhile, the number
    # may be reused by another socket, which a shutdown must never hit.
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    started = time.monotonic()
    timer.start()
    try:
        yield
    except psycopg.Error as exc:
        if fired.is_set():
            raise DeadlineExceededError(
                f"no answer within {seconds:.1f} s (after {time.monotonic() - started:.1f} s)"
            ) from exc
        raise
    finally:
        timer.cancel()
        sock.close()
        if fired.is_set():
            conn.close()
