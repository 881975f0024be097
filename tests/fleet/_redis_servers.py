"""Extra private redis-server processes for the failover tests: primaries, replicas, sentinels.

Each listens on a free loopback port, keeps nothing on disk, and is stopped by the test. A
primary starts a replica's first sync at once (redis-server 7 waits 5 s by default for more
replicas to join the diskless transfer, and a replica has no data until it ends).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_servers(folder: Path, count: int) -> Iterator[list[redis.Redis]]:
    """``count`` plain redis-servers (no persistence); yields an admin client for each."""
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[redis.Redis] = []
    try:
        for index in range(count):
            port = free_port()
            data = folder / f"redis-{index}"
            data.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(data),
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            clients.append(redis.Redis(host="127.0.0.1", port=port, protocol=2))
        for client in clients:
            wait_for(client)
        yield clients
    finally:
        for client in clients:
            client.close()
        for process in processes:
            process.terminate()
            process.wait(10)


@contextmanager
def sentinels(
    folder: Path, primary_port: int, count: int, *, service: str = "fleet"
) -> Iterator[list[redis.Redis]]:
    """``count`` sentinels watching the primary (quorum 1); yields a client for each."""
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[redis.Redis] = []
    try:
        for index in range(count):
            port = free_port()
            conf = folder / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {service} 127.0.0.1 {primary_port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 5000\n"
            )
            processes.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
            clients.append(redis.Redis(host="127.0.0.1", port=port, protocol=2))
        for client in clients:
            wait_for(client)
        yield clients
    finally:
        for client in clients:
            client.close()
        for process in processes:
            process.terminate()
            process.wait(10)


def wait_for(client: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_for_replica(replica: redis.Redis, timeout_s: float = 10.0) -> None:
    """Wait until ``replica``'s link to its primary is up (its first sync is done)."""
    deadline = time.monotonic() + timeout_s
    while replica.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replica's link to its primary is not up after {timeout_s} s")
        time.sleep(0.01)


def port_of(client: redis.Redis) -> int:
    port: int = client.connection_pool.connection_kwargs["port"]
    return port
