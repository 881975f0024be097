"""The fleet's background threads: an idle writer sleeps; a failed write is retried."""

from __future__ import annotations

import time
from collections.abc import Callable

from _fleet_helpers import Connect
from redis.exceptions import TimeoutError as RedisTimeoutError


def _until(check: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_idle_writer_thread_sleeps_until_work_is_queued(connect: Connect) -> None:
    connection = connect()
    runs: list[float] = []
    connection.urgent(lambda: runs.append(time.monotonic()))
    connection.start()
    time.sleep(0.55)
    # nothing queued: no wake-up (before: one every 100 ms, each taking the GIL from the loop)
    assert runs == []
    connection.wake()  # a call queued work
    assert _until(lambda: len(runs) == 1)
    time.sleep(0.3)
    assert len(runs) == 1


def test_a_write_that_timed_out_is_retried_without_a_wake(connect: Connect) -> None:
    connection = connect()
    runs: list[float] = []

    def write() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RedisTimeoutError("Redis was slow")

    connection.urgent(write)
    connection.start()
    connection.wake()
    assert _until(lambda: len(runs) >= 2)  # tried again by itself
    assert runs[1] - runs[0] < 0.5
    assert connection.timeouts == 1
    assert _until(connection.reliable)  # a second after the timeout
    time.sleep(0.15)  # (the turn already under way)
    settled = len(runs)
    time.sleep(0.35)
    assert len(runs) == settled  # then idle again: asleep
