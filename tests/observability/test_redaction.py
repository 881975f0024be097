"""Secrets are masked by shape and by registration."""

from __future__ import annotations

import logging

import pytest

from llm_server.core.redaction import (
    REDACTED,
    RedactingFilter,
    clear_registered_secrets,
    redact,
    register_secret,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-ant-api03-AbCdEf123456_-xyz end", f"key {REDACTED} end"),
        ("key sk-proj-AbCdEf1234567890 end", f"key {REDACTED} end"),
        ("key sk-1234567890abcdef end", f"key {REDACTED} end"),
        ("Authorization: Bearer abc.def.ghi-123", f"Authorization: {REDACTED}"),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", f"{{'authorization': '{REDACTED}'}}"),
        ('headers={"x-api-key": "abcdef123456"}', f'headers={{"x-api-key": "{REDACTED}"}}'),
        ("url?api_key=abcdef123456&page=2", f"url?api_key={REDACTED}&page=2"),
        ("LM(api-key='abcdef123456')", f"LM(api-key='{REDACTED}')"),
        ("token is Bearer abcdefgh12345678", f"token is Bearer {REDACTED}"),
    ],
)
def test_credential_shapes_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "ask-me anything about a task-force",
        "the api key is missing",
        "Authorization failed",
        "sk-short",
        "plain answer: Paris",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_secrets_are_masked_whatever_their_shape() -> None:
    register_secret("pa55word-for-acme")
    register_secret("pa55word-for-acme-prod")  # contains the first; masked whole
    assert redact("a pa55word-for-acme-prod b pa55word-for-acme") == f"a {REDACTED} b {REDACTED}"
    clear_registered_secrets()
    assert redact("pa55word-for-acme") == "pa55word-for-acme"


@pytest.mark.parametrize("value", [None, "", "   ", "abc", "12345"])
def test_empty_and_tiny_values_are_not_registered(value: str | None) -> None:
    register_secret(value)
    assert redact("abc 12345 text") == "abc 12345 text"


def test_filter_masks_message_args_and_exception() -> None:
    register_secret("hunter2hunter2")
    try:
        raise RuntimeError("bad key hunter2hunter2")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "llm_server", logging.ERROR, __file__, 1, "key=%s", ("hunter2hunter2",), exc_info
    )
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == f"key={REDACTED}"
    assert record.exc_text is not None
    assert "hunter2hunter2" not in record.exc_text
    assert "RuntimeError" in record.exc_text
