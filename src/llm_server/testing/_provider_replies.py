"""What the local provider answers: DSPy adapter-formatted replies, scripted or echoed.

DSPy's ChatAdapter ends the last user message with "Respond with the corresponding output
fields, starting with the field `[[ ## answer ## ]]` ..." and expects each field as
``[[ ## field ## ]]\\n<value>`` followed by ``[[ ## completed ## ]]``. Its JSONAdapter ends with
"Respond with a JSON object in the following order of fields: `answer`, ..." and expects a JSON
object. Its XMLAdapter ends with "Respond with the corresponding output fields wrapped in XML
tags `<answer>`, then ..." and expects ``<answer>value</answer>``. The system message lists each
output field's type ("2. `n` (int): "), which we use to give typed fields a value that parses.
Anything else gets plain text.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "PromptShape",
    "RawReply",
    "RenderedReply",
    "ReplyValue",
    "read_prompt",
    "render_full_reply",
    "render_reply",
]

_CHAT_REQUEST: Final = "Respond with the corresponding output fields"
_JSON_REQUEST: Final = "Respond with a JSON object in the following order of fields:"
_XML_REQUEST: Final = "Respond with the corresponding output fields wrapped in XML tags"
_XML_TAG: Final = re.compile(r"`<(\w+)>`")
_XML_INPUT: Final = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.DOTALL)
_MARKER: Final = re.compile(r"\[\[ ## (\w+) ## \]\]")
_BACKTICKED: Final = re.compile(r"`(\w+)`")
_FIELD_TYPE: Final = re.compile(r"^\d+\. `(\w+)` \((.*?)\):", re.MULTILINE)
_ECHO_LIMIT: Final = 400


@dataclass(frozen=True, slots=True)
class RawReply:
    """Reply text sent verbatim, without adapter formatting: the answers real models give.

    The reply is billed like any other (``usage`` counts the text and the refusal), so a test
    can check that a failed call's tokens are reported. Examples::

        RawReply("no field markers at all")                   # unparseable
        RawReply("[[ ## answer ## ]]\nThe begin", finish_reason="length")  # cut at max_tokens
        RawReply("")                                          # empty content
        RawReply(None, refusal="I can't help with that.")     # an OpenAI refusal

    Attributes:
        text: The exact assistant message content; ``None`` sends ``"content": null``.
        finish_reason: The OpenAI ``finish_reason`` (``"stop"``, ``"length"``,
            ``"content_filter"``...); on the Anthropic API ``"stop"`` is ``end_turn``,
            ``"length"`` is ``max_tokens`` and a refusal is ``refusal``.
        refusal: An OpenAI ``message.refusal`` (the model declined; its message to the user).
    """

    text: str | None
    finish_reason: str = "stop"
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedReply:
    """What the provider sends for one request: content, finish reason and refusal."""

    text: str | None
    finish_reason: str = "stop"
    refusal: str | None = None

    @property
    def billed_text(self) -> str:
        """The text whose tokens the reply's ``completion_tokens`` count."""
        return (self.text or "") + (self.refusal or "")


ReplyValue: TypeAlias = str | Mapping[str, Any] | RawReply
"""A reply: one value for every output field (``str``), values per field (mapping; fields left
out get the default answer), or verbatim text (:class:`RawReply`)."""


@dataclass(frozen=True, slots=True)
class PromptShape:
    """What a request asks for, read from its messages.

    Attributes:
        style: ``"chat"`` (DSPy ChatAdapter), ``"json"`` (JSONAdapter), ``"xml"``
            (XMLAdapter) or ``"plain"``.
        output_fields: Requested output field names, in order.
        field_types: Output field name -> type as DSPy printed it (``"int"``).
        inputs: Input field name -> value text, for adapter-formatted requests.
        last_user_text: Text of the last user message.
    """

    style: Literal["chat", "json", "xml", "plain"]
    output_fields: tuple[str, ...]
    last_user_text: str
    field_types: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)

    @property
    def echo(self) -> str:
        """The default answer: ``"echo: "`` plus the input values (or the user text)."""
        source = " | ".join(self.inputs.values()) if self.inputs else self.last_user_text
        return "echo: " + " ".join(source.split())[:_ECHO_LIMIT]


def read_prompt(system_text: str, last_user_text: str) -> PromptShape:
    """Read the adapter format (if any) of a request from its system and last user text."""
    head, found, tail = last_user_text.partition(_XML_REQUEST)
    if found:
        return PromptShape(
            style="xml",
            output_fields=tuple(dict.fromkeys(_XML_TAG.findall(tail))),
            last_user_text=last_user_text,
            field_types=dict(_FIELD_TYPE.findall(system_text)),
            inputs={name: value.strip() for name, value in _XML_INPUT.findall(head)},
        )
    for style, phrase in (("chat", _CHAT_REQUEST), ("json", _JSON_REQUEST)):
        head, found, tail = last_user_text.partition(phrase)
        if not found:
            continue
        pattern = _MARKER if style == "chat" else _BACKTICKED
        fields = tuple(name for name in pattern.findall(tail) if name != "completed")
        pieces = _MARKER.split(head)
        inputs = {
            pieces[i]: pieces[i + 1].strip() for i in range(1, len(pieces) - 1, 2) if pieces[i]
        }
        return PromptShape(
            style="chat" if style == "chat" else "json",
            output_fields=tuple(dict.fromkeys(fields)),
            last_user_text=last_user_text,
            field_types=dict(_FIELD_TYPE.findall(system_text)),
            inputs=inputs,
        )
    return PromptShape(style="plain", output_fields=(), last_user_text=last_user_text)


def render_reply(shape: PromptShape, reply: ReplyValue | None) -> str:
    """The assistant message text for ``shape``, from a scripted ``reply`` or the default."""
    if isinstance(reply, RawReply):
        return reply.text or ""
    return _rendered_text(shape, reply)


def render_full_reply(shape: PromptShape, reply: ReplyValue | None) -> RenderedReply:
    """What to send for ``shape``: the text, and a :class:`RawReply`'s finish reason and refusal."""
    if isinstance(reply, RawReply):
        return RenderedReply(reply.text, reply.finish_reason, reply.refusal)
    return RenderedReply(_rendered_text(shape, reply))


def _rendered_text(shape: PromptShape, reply: str | Mapping[str, Any] | None) -> str:
    if shape.style == "plain" or not shape.output_fields:
        if reply is None:
            return shape.echo
        if isinstance(reply, str):
            return reply
        return json.dumps(dict(reply))
    values = {name: _default_value(shape, name) for name in shape.output_fields}
    if isinstance(reply, str):
        values = dict.fromkeys(shape.output_fields, reply)
    elif reply is not None:
        values.update(reply)
    return _formatted(shape.style, values)


def _formatted(style: str, values: Mapping[str, Any]) -> str:
    """Output field values as the adapter of ``style`` expects them."""
    if style == "json":
        return json.dumps(values)
    if style == "xml":
        return "\n".join(f"<{name}>\n{_as_text(v)}\n</{name}>" for name, v in values.items())
    sections = [f"[[ ## {name} ## ]]\n{_as_text(value)}" for name, value in values.items()]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _default_value(shape: PromptShape, name: str) -> Any:
    """A value of the field's declared type; strings (and unknown types) get the echo."""
    kind = shape.field_types.get(name, "str").replace(" ", "")
    if kind.startswith("Literal[") and kind.endswith("]"):
        try:
            options = ast.literal_eval(f"[{kind[len('Literal[') : -1]}]")
        except (ValueError, SyntaxError):
            return shape.echo
        return options[0] if options else shape.echo
    simple: dict[str, Any] = {"int": 0, "float": 0.0, "bool": True}
    if kind in simple:
        return simple[kind]
    if kind.startswith(("list[", "tuple[")) or kind in {"list", "tuple"}:
        return []
    if kind.startswith("dict[") or kind == "dict":
        return {}
    return shape.echo
