"""Request ids: well-formed, unique, independent of the global ``random`` and of forks."""

from __future__ import annotations

import os
import random
import re
import sys
import uuid

import pytest

from llm_server.core._ids import new_uuid4, random_hex128
from llm_server.core.metadata import new_execution_id


def test_execution_ids_are_canonical_version_4_uuids() -> None:
    for _ in range(2000):
        text = new_execution_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_trace_ids_are_32_lowercase_hex_digits() -> None:
    for _ in range(2000):
        assert re.fullmatch(r"[0-9a-f]{32}", random_hex128())


def test_ids_do_not_repeat() -> None:
    assert len({new_uuid4() for _ in range(20_000)}) == 20_000
    assert len({random_hex128() for _ in range(20_000)}) == 20_000


def test_seeding_the_global_random_does_not_repeat_ids() -> None:
    random.seed(1234)
    first = new_uuid4()
    random.seed(1234)
    assert new_uuid4() != first


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_a_forked_child_draws_different_ids_from_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        try:
            os.write(write, new_uuid4().encode())
        finally:
            os._exit(0)
    os.close(write)
    parent_next = new_uuid4()
    child_next = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    uuid.UUID(child_next)
    assert child_next != parent_next
