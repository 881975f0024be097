"""The optional keyed content hash of a version (``LLM_SERVER_PROGRAM_STORE_KEY``).

The sha256 stored with a version catches an accidental or careless edit, not a deliberate
one: whoever can rewrite the state can rewrite its hash too. An HMAC-SHA256 under a key the
database never sees can only be produced by whoever holds the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import register_secret
from llm_server.models._versioning import canonical_json, sha256_hex

__all__ = ["MIN_KEY_LENGTH", "check_key", "content_mac"]

MIN_KEY_LENGTH: Final = 16
"""``LLM_SERVER_PROGRAM_STORE_KEY`` must have at least this many characters."""


def check_key(key: str) -> bytes:
    """The key as bytes, registered as a secret (never shown).

    Raises:
        ConfigurationError: It is shorter than :data:`MIN_KEY_LENGTH`.
    """
    register_secret(key)
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"LLM_SERVER_PROGRAM_STORE_KEY must have at least {MIN_KEY_LENGTH} characters "
            f"(got {len(key)})"
        )
    return key.encode()


def content_mac(key: bytes, program_id: str, version: str, state_text: str, manifest: Any) -> str:
    """HMAC-SHA256 (hex) of a version: its id, name, state (by sha256) and manifest."""
    signed = canonical_json(
        {
            "program_id": program_id,
            "version": version,
            "state_sha256": sha256_hex(state_text.encode()),
            "manifest": manifest,
        }
    )
    return hmac.new(key, signed, hashlib.sha256).hexdigest()
