"""The pre-check that lets most text skip the credential patterns never lets a credential by."""

from __future__ import annotations

import itertools

import pytest

from llm_server.core.telemetry import redact
from llm_server.core.telemetry._redaction import _PATTERNS

# One or more per pattern (checked below), shaped like credentials, valid for nothing.
CREDENTIALS = [
    "Authorization: Bearer abc.def.ghi-123",
    "proxy-authorization=Basic dXNlcjpwYXNz",
    'headers={"x-api-key": "abcdef123456"}',
    "url?api_key=abcdef123456&page=2",
    "LM(apikey='abcdef123456')",
    "access_token: abcdef123456",
    "secret-key=abcdef123456",
    "client_secret='abcdef123456'",
    "sent Bearer abcdefgh12345678",
    "got sk-ant-api03-AbCdEf123456_-xyz end",
    "HF=hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh set",
    "?q=AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q&alt=sse",
]
# Non-ASCII letters that IGNORECASE matches to ASCII ones: Kelvin sign (k), long s (s),
# dotted capital I (i).
LOOKALIKES = {"k": "\u212a", "s": "\u017f", "i": "\u0130"}


def _all_patterns(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _variants(text: str) -> list[str]:
    cased = [text, text.upper(), text.lower(), text.swapcase(), text.title()]
    lookalike = [
        "".join(LOOKALIKES.get(c, c) if i % 2 else c for i, c in enumerate(text)) for text in cased
    ] + [text.translate(str.maketrans(LOOKALIKES))]
    return [f"{before}{t}{after}" for t in cased + lookalike for before, after in _FRAMES]


_FRAMES = [("", ""), ("the answer: ", " (done)"), ("\u00e9t\u00e9 ", " \u2014 fin")]


def test_every_pattern_has_a_credential_here() -> None:
    for pattern, _ in _PATTERNS:
        assert any(pattern.search(text) for text in CREDENTIALS), pattern.pattern


@pytest.mark.parametrize("text", CREDENTIALS)
def test_redact_masks_whatever_all_patterns_mask(text: str) -> None:
    for variant in _variants(text):
        assert redact(variant) == _all_patterns(variant), variant


def test_text_without_a_trigger_is_returned_as_is() -> None:
    ordinary = ["17 plus 17 is 34.", "Paris", "", "caf\u00e9 au lait", "x" * 5000]
    for text in itertools.chain.from_iterable(_variants(t) for t in ordinary):
        assert redact(text) == text == _all_patterns(text)
