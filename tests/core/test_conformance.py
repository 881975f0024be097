"""``conforms``: isinstance for runtime-checkable protocols, cached per class only when safe."""

from __future__ import annotations

import typing
from typing import Any, Protocol, runtime_checkable

import pytest

from llm_server.core._conformance import _conforming, _members, conforms
from llm_server.core.implementations import OutputProcessor
from llm_server.core.protocols import ModelBackend, PipelineStep, StorageAdapter, TypedPipelineStep
from llm_server.core.telemetry import RequestObserver


@runtime_checkable
class Greeter(Protocol):
    name: str

    def greet(self) -> str: ...


class ClassLevel:
    name = "class attribute"

    def greet(self) -> str:
        return "hi"


class InstanceLevel:
    def __init__(self, *, with_name: bool) -> None:
        if with_name:
            self.name = "set per instance"

    def greet(self) -> str:
        return "hi"


class NoGreet:
    name = "x"


@pytest.mark.parametrize(
    "protocol",
    [
        ModelBackend,
        PipelineStep,
        TypedPipelineStep,
        StorageAdapter,
        RequestObserver,
        OutputProcessor,
    ],
)
def test_members_cover_what_isinstance_checks(protocol: Any) -> None:
    expected = {n for n in typing._get_protocol_attrs(protocol) if not n.startswith("_")}  # type: ignore[attr-defined]
    assert _members(protocol) == expected


def test_a_class_defining_every_member_is_remembered() -> None:
    assert conforms(ClassLevel(), Greeter)
    assert (ClassLevel, Greeter) in _conforming


def test_instance_attributes_are_checked_every_time() -> None:
    assert conforms(InstanceLevel(with_name=True), Greeter)
    assert (InstanceLevel, Greeter) not in _conforming
    assert not conforms(InstanceLevel(with_name=False), Greeter)
    assert not isinstance(InstanceLevel(with_name=False), Greeter)


@pytest.mark.parametrize("obj", [NoGreet(), object(), "text", None])
def test_non_conforming_objects_are_refused_and_not_remembered(obj: Any) -> None:
    assert not conforms(obj, Greeter)
    assert (type(obj), Greeter) not in _conforming
