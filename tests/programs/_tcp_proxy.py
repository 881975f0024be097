"""A TCP proxy on 127.0.0.1 that tests put in front of a private server to break the path.

Modes (switch at any time with :meth:`TcpProxy.set_mode`):

- ``forward``: bytes pass both ways;
- ``silent``: connections stay open and bytes are still read (the kernel acknowledges them),
  but nothing is passed on either way, and new connections are accepted and never answered:
  a hung peer, which no TCP keepalive or ``tcp_user_timeout`` notices;
- ``reset``: every open connection is closed with a reset, and new ones are reset at once.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["forward", "silent", "reset"]


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_port``; see the module docstring for modes."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._mode: Mode = "forward"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: Mode) -> None:
        """Switch the mode; ``reset`` also resets every open connection."""
        with self._lock:
            self._mode = mode
            if mode == "reset":
                for sock in self._sockets:
                    _reset(sock)
                self._sockets.clear()

    def url(self, server_url: str) -> str:
        """``server_url`` with its port replaced by the proxy's."""
        return server_url.replace(f":{self._target_port}/", f":{self.port}/")

    def close(self) -> None:
        """Stop accepting and reset every connection."""
        self._closed = True
        self.set_mode("reset")
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._mode == "reset":
                    _reset(client)
                    continue
                self._sockets.append(client)
                if self._mode == "silent":
                    threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket | None) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    if target is not None:
                        target.shutdown(socket.SHUT_WR)
                return
            if target is None or self._mode != "forward":
                continue  # read and dropped: the sender's kernel sees its bytes acknowledged
            try:
                target.sendall(data)
            except OSError:
                return


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) rather than a FIN; wakes a thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
