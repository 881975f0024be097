"""Request ids: well-formed, time-ordered, unique, independent of the global ``random`` and of
forks."""

from __future__ import annotations

import os
import random
import re
import sys
import time
import uuid

import pytest

from llm_server.core._ids import new_uuid7, random_hex128
from llm_server.core.metadata import new_execution_id


def test_execution_ids_are_canonical_version_7_uuids_carrying_their_time() -> None:
    for _ in range(2000):
        before = time.time_ns() // 1_000_000
        text = new_execution_id()
        after = time.time_ns() // 1_000_000
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the Unix time in ms, its first 48 bits


def test_ids_sort_by_time_across_milliseconds() -> None:
    # what keeps the traffic store's id index appending instead of writing at random pages
    ids = []
    for _ in range(5):
        ids.append(new_uuid7())
        time.sleep(0.002)
    assert ids == sorted(ids)


def test_trace_ids_are_32_lowercase_hex_digits() -> None:
    for _ in range(2000):
        assert re.fullmatch(r"[0-9a-f]{32}", random_hex128())


def test_ids_do_not_repeat() -> None:
    assert len({new_uuid7() for _ in range(20_000)}) == 20_000
    assert len({random_hex128() for _ in range(20_000)}) == 20_000


def test_seeding_the_global_random_does_not_repeat_ids() -> None:
    random.seed(1234)
    first = new_uuid7()
    random.seed(1234)
    assert new_uuid7() != first


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_a_forked_child_draws_different_ids_from_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        try:
            os.write(write, new_uuid7().encode())
        finally:
            os._exit(0)
    os.close(write)
    parent_next = new_uuid7()
    child_next = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    uuid.UUID(child_next)
    assert child_next != parent_next
