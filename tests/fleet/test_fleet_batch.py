"""One round trip of scripts (``ScriptBatch``): what it sends, and a connection kept in step."""

from __future__ import annotations

import pytest
from _fleet_helpers import Connect
from redis.exceptions import ResponseError

from llm_server.fleet._batch import ScriptBatch

_ECHO = "return ARGV"
_INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def test_arguments_are_sent_as_redis_py_would_send_them(connect: Connect) -> None:
    connection = connect()
    echo = connection.client.register_script(_ECHO)
    connection.client.script_load(_ECHO)
    batch = ScriptBatch()
    batch.add(echo, [], ["text", b"bytes", 7, -3, 0.25, 1e-07])
    assert batch.run(connection.client) == [[b"text", b"bytes", b"7", b"-3", b"0.25", b"1e-07"]]


def test_an_error_among_the_replies_is_raised_and_leaves_the_connection_usable(
    connect: Connect,
) -> None:
    connection = connect()
    client = connection.client
    incr = client.register_script(_INCR)
    client.set(connection.key("text"), "not a number")
    batch = ScriptBatch()
    batch.add(incr, [connection.key("n")], [1])
    batch.add(incr, [connection.key("text")], [1])  # refused: not an integer
    batch.add(incr, [connection.key("n")], [1])
    with pytest.raises(ResponseError):
        batch.run(client)
    assert client.get(connection.key("n")) == b"2"  # the commands around it ran
    again = ScriptBatch()
    again.add(incr, [connection.key("n")], [5])
    assert again.run(client) == [7]  # no reply of the first batch was left to misread


def test_scripts_redis_lost_are_loaded_and_only_those_sent_again(connect: Connect) -> None:
    connection = connect()
    client = connection.client
    incr = client.register_script(_INCR)
    echo = client.register_script(_ECHO)
    first = ScriptBatch()
    first.add(incr, [connection.key("n")], [1])
    first.run(client)
    client.script_flush()  # (a restart without persistence)
    batch = ScriptBatch()
    batch.add(incr, [connection.key("n")], [1])
    batch.add(echo, [], ["x"])
    assert batch.run(client) == [2, [b"x"]]
