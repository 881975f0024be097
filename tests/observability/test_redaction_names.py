"""redact_name: a cached redaction for text that repeats (a mapping's keys)."""

from __future__ import annotations

from llm_server.core.telemetry import register_secret
from llm_server.core.telemetry._redaction import REDACTED, clear_registered_secrets, redact_name


def test_a_name_cached_before_a_secret_was_registered_is_redacted_again() -> None:
    name = "tenant-zq81vv"
    assert redact_name(name) == name  # cached as harmless
    try:
        register_secret("zq81vv")
        assert redact_name(name) == f"tenant-{REDACTED}"
    finally:
        clear_registered_secrets()
    assert redact_name(name) == name
    assert redact_name("sk-proj-abcdefghijklmnop0123") == REDACTED
