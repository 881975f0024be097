"""Reading DSPy adapter prompts and rendering replies (no network)."""

from __future__ import annotations

import json
from typing import Any, Literal

import dspy
import pytest

from llm_server.testing import RawReply
from llm_server.testing._provider_replies import read_prompt, render_reply


class Typed(dspy.Signature):  # type: ignore[misc]
    """Answer."""

    question: str = dspy.InputField()
    context: list[str] = dspy.InputField()
    answer: str = dspy.OutputField()
    n: int = dspy.OutputField()
    score: float = dspy.OutputField()
    ok: bool = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    kind: Literal["alpha", "beta"] = dspy.OutputField()


def shape_for(adapter: Any) -> Any:
    system, user = adapter.format(Typed, demos=[], inputs={"question": "Why?", "context": ["a"]})
    return read_prompt(system["content"], user["content"])


@pytest.mark.parametrize(
    ("adapter", "style"), [(dspy.ChatAdapter(), "chat"), (dspy.JSONAdapter(), "json")]
)
def test_reads_fields_types_and_inputs(adapter: Any, style: str) -> None:
    shape = shape_for(adapter)
    assert shape.style == style
    assert shape.output_fields == ("answer", "n", "score", "ok", "tags", "kind")
    assert shape.field_types["kind"] == "Literal['alpha', 'beta']"
    assert shape.inputs == {"question": "Why?", "context": '["a"]'}
    assert shape.echo == 'echo: Why? | ["a"]'


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()])
def test_default_reply_parses_back_through_the_adapter(adapter: Any) -> None:
    text = render_reply(shape_for(adapter), {"score": 0.5})
    parsed = adapter.parse(Typed, text)
    assert parsed == {
        "answer": 'echo: Why? | ["a"]',
        "n": 0,
        "score": 0.5,
        "ok": True,
        "tags": [],
        "kind": "alpha",
    }


def test_string_reply_fills_every_field_and_json_style_is_an_object() -> None:
    shape = shape_for(dspy.JSONAdapter())
    assert json.loads(render_reply(shape, "same")) == dict.fromkeys(shape.output_fields, "same")


def test_plain_prompts_and_raw_replies() -> None:
    plain = read_prompt("", "  just\n text ")
    assert plain.style == "plain"
    assert render_reply(plain, None) == "echo: just text"
    assert render_reply(plain, {"a": 1}) == '{"a": 1}'
    assert render_reply(shape_for(dspy.ChatAdapter()), RawReply("free text")) == "free text"


def test_echo_is_bounded() -> None:
    assert len(read_prompt("", "x " * 5000).echo) == len("echo: ") + 400
