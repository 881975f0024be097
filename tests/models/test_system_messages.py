"""The library's adapters keep each signature's system message instead of rebuilding it per call.

What is kept must be what DSPy would build: for every adapter, for signatures with typed and
described fields, after ``Signature.instructions = ...`` changed a signature in place, and on
the wire, where the provider sees the same messages as with DSPy's own adapter.
"""

from __future__ import annotations

import copy
import gc
import pickle
import threading
import weakref
from typing import Any

import dspy
import pytest
from _model_helpers import MakeManager
from pydantic import BaseModel

from llm_server.models._request_scope import _QUIET_ADAPTER, SystemMessages, adapter_named
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Verdict(BaseModel):
    label: str
    score: float


class Judge(dspy.Signature):
    """Judge the claims against the evidence."""

    claims: list[str] = dspy.InputField(desc="one claim per item")
    evidence: dict[str, int] = dspy.InputField()
    verdict: Verdict = dspy.OutputField(desc="the label and a score in [0, 1]")
    confident: bool = dspy.OutputField()


FRESH = {
    "chat": lambda: dspy.ChatAdapter(use_json_adapter_fallback=False),
    "json": dspy.JSONAdapter,
    "xml": lambda: dspy.XMLAdapter(use_json_adapter_fallback=False),
}


@pytest.mark.parametrize("name", sorted(FRESH))
@pytest.mark.parametrize("signature", [Ask, Judge, Ask.with_instructions("Be brief.")])
def test_a_kept_message_is_the_one_dspy_builds(name: str, signature: Any) -> None:
    expected = FRESH[name]().format_system_message(signature)
    adapter = adapter_named(name)
    assert isinstance(adapter.format_system_message, SystemMessages)
    assert adapter.format_system_message(signature) == expected  # built
    assert adapter.format_system_message(signature) == expected  # kept


def test_the_default_adapter_keeps_them_too() -> None:
    expected = FRESH["chat"]().format_system_message(Judge)
    assert _QUIET_ADAPTER.format_system_message(Judge) == expected
    assert _QUIET_ADAPTER.format_system_message(Judge) == expected


def test_each_signature_is_built_once_and_the_adapter_class_is_unchanged() -> None:
    built: list[Any] = []

    def build(signature: Any) -> str:
        built.append(signature)
        return f"system for {signature.__name__}"

    messages = SystemMessages(build)
    for _ in range(3):
        assert messages(Ask) == "system for Ask"
        assert messages(Judge) == "system for Judge"
    assert built == [Ask, Judge]
    # DSPy's stream listeners pick their parser by the adapter's class name
    assert type(adapter_named("chat")).__name__ == "ChatAdapter"
    assert type(adapter_named("xml")).__name__ == "XMLAdapter"


def test_instructions_changed_in_place_are_seen() -> None:
    class Mutable(dspy.Signature):
        """First instructions."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    adapter = adapter_named("chat")
    assert "First instructions." in adapter.format_system_message(Mutable)
    Mutable.instructions = "Second instructions."  # DSPy's setter: sets __doc__ in place
    message = adapter.format_system_message(Mutable)
    assert "Second instructions." in message
    assert "First instructions." not in message
    assert message == FRESH["chat"]().format_system_message(Mutable)


def test_instructions_changed_while_a_message_is_built_are_not_kept_under_the_old_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Mutable(dspy.Signature):
        """Instructions A."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    adapter = adapter_named("chat")
    in_build, changed = threading.Event(), threading.Event()
    real = dspy.ChatAdapter.format_field_description

    def slow(self: Any, signature: Any) -> str:  # inside DSPy's build, before it reads
        if signature is Mutable and not in_build.is_set():  # the instructions
            in_build.set()
            assert changed.wait(5)
        return str(real(self, signature))

    monkeypatch.setattr(dspy.ChatAdapter, "format_field_description", slow)
    worker = threading.Thread(target=adapter.format_system_message, args=(Mutable,))
    worker.start()
    assert in_build.wait(5)
    Mutable.instructions = "Instructions B."  # another thread, mid-build
    changed.set()
    worker.join(5)
    Mutable.instructions = "Instructions A."  # restored: the same __doc__ as at the start
    expected = FRESH["chat"]().format_system_message(Mutable)
    assert "Instructions A." in expected
    assert adapter.format_system_message(Mutable) == expected


def test_a_dropped_signature_is_not_held() -> None:
    adapter = adapter_named("chat")
    signature = Ask.with_instructions("A signature an optimizer tried once.")
    adapter.format_system_message(signature)
    gone = weakref.ref(signature)
    del signature
    gc.collect()
    assert gone() is None


def test_what_cannot_be_held_weakly_is_built_every_time() -> None:
    built: list[Any] = []
    messages = SystemMessages(lambda signature: built.append(signature) or "message")
    assert messages(7) == "message"
    assert messages(7) == "message"
    assert built == [7, 7]


def test_a_copied_or_pickled_adapter_builds_its_own() -> None:
    adapter = adapter_named("json")
    expected = adapter.format_system_message(Judge)
    for other in (copy.deepcopy(adapter), pickle.loads(pickle.dumps(adapter))):
        kept = other.format_system_message
        assert isinstance(kept, SystemMessages)
        assert kept is not adapter.format_system_message
        assert kept(Judge) == expected


@pytest.mark.parametrize("adapter", [None, "chat", "json", "xml"])
async def test_the_provider_sees_what_dspys_own_adapter_sends(
    provider: LocalProvider, make_manager: MakeManager, adapter: str | None
) -> None:
    extra = {} if adapter is None else {"adapter": adapter}
    model = {"model_name": "openai/gpt-4o-mini", "api_key": "sk-test", **extra}
    manager = make_manager({"m": model})
    backend = manager.single_attempt_backend(dspy.Predict(Ask), "m")
    expected = FRESH[adapter or "chat"]().format_system_message(Ask)
    for question in ("first?", "second?"):
        await backend.predict({"question": question})
        sent = provider.requests[-1].messages
        assert sent[0]["role"] == "system"
        assert sent[0]["content"] == expected
        assert question in str(sent[-1]["content"])
