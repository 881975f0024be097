"""Secrets are masked by shape and by registration."""

from __future__ import annotations

import logging

import pytest

from llm_server.core.telemetry import RedactingFilter, redact, register_secret
from llm_server.core.telemetry._redaction import REDACTED, clear_registered_secrets

# Shaped like real credentials, valid for nothing.
HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"  # 34 letters
GOOGLE_KEY = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"  # 35 characters
GOOGLE_KEY_DASHED = "AIza" + "Sy-_b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6-"


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
        # Hugging Face user and fine-grained tokens: hf_ and 34 letters.
        (f"HF_TOKEN={HF_TOKEN} set", f"HF_TOKEN={REDACTED} set"),
        (f"401 for token '{HF_TOKEN}'.", f"401 for token '{REDACTED}'."),
        # Google API keys: AIza and 35 letters, digits, '-' or '_'.
        (f"?key={GOOGLE_KEY}&alt=sse", f"?key={REDACTED}&alt=sse"),
        (f"GEMINI_API_KEY {GOOGLE_KEY_DASHED}", f"GEMINI_API_KEY {REDACTED}"),
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
        "from huggingface_hub import hf_hub_download; os.environ['HF_TOKEN']",
        "hf_transfer is enabled",
        "AIza alone, or AIzaShort123, is not a key",
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
