"""Masking of API keys and other secrets in logs, span attributes and error messages.

Two layers work together:

* **Patterns** catch the usual shapes of credentials wherever they appear: OpenAI and
  Anthropic keys (``sk-...``, ``sk-ant-...``), Hugging Face tokens (``hf_...``), Google API
  keys (``AIza...``), ``Bearer`` tokens, ``Authorization`` and ``x-api-key`` header values,
  and ``api_key=...`` / ``"api_key": "..."`` pairs.
* **Registered secrets** catch everything else: the model manager calls
  :func:`register_secret` with every configured key at startup, and from then on the exact
  value is masked wherever it shows up, whatever its shape.

Example::

    from llm_server.core.telemetry._redaction import redact, register_secret

    register_secret("my-very-private-key")
    redact("calling with my-very-private-key")  # 'calling with [REDACTED]'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from llm_server._unicode import valid_text

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "clear_registered_secrets",
    "redact",
    "redact_name",
    "redact_value",
    "register_secret",
]

REDACTED = "[REDACTED]"
"""What a masked secret is replaced with."""

# Shorter values would mask ordinary words and numbers all over the logs.
_MIN_SECRET_LENGTH = 6

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Header and key/value forms first, so the name stays readable ("api_key=[REDACTED]").
    (
        re.compile(
            r"(?i)(\b(?:authorization|proxy-authorization)[\"']?\s*[:=]\s*[\"']?)"
            r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;}]+"
        ),
        r"\1" + REDACTED,
    ),
    (
        re.compile(
            r"(?i)(\b(?:x-api-key|api[_-]?key|access[_-]?token|secret[_-]?key|client[_-]?secret)"
            r"[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])[^\s\"',;&}]+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)\bbearer\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=\-]{8,}"), "Bearer " + REDACTED),
    # sk-ant-..., sk-proj-..., sk-... (OpenAI, Anthropic, DeepSeek and many compatibles).
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), REDACTED),
    # Hugging Face access tokens: hf_ and 34 letters. Short or snake_case names such as
    # hf_hub_download or HF_TOKEN stay readable.
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}(?![A-Za-z0-9_])"), REDACTED),
    # Google API keys (Gemini, Vertex AI express mode, Maps): AIza and 35 more characters.
    (re.compile(r"\bAIza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"), REDACTED),
)

# Every pattern above needs one of these lower-case ASCII substrings to match, so an ASCII
# text holding none of them skips the six substitutions (~15x cheaper on a sentence: traffic
# capture redacts every captured string). Non-ASCII text always runs them, since under
# IGNORECASE "\u212a" (Kelvin) matches "k" and "\u017f" matches "s". Looked for with ``in``,
# not one regex of alternatives: 0.32 against 0.57 us on a 50-character sentence, 4.6 against
# 9.3 us on 1,000 characters (sre tries every alternative at each position).
# A new pattern adds its trigger here; tests/observability/test_redaction_fast_path.py checks both.
_TRIGGERS = ("key", "token", "secret", "bearer", "sk-", "hf_", "aiza", "authorization")

_lock = threading.Lock()
_secrets: set[str] = set()
# Rebuilt on every registration; read without the lock (a single reference swap).
_secrets_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask every later occurrence of ``value`` in logs, spans and error messages.

    Empty values, ``None`` and values shorter than 6 characters are ignored (masking them would
    garble ordinary text). Registering the same value twice is harmless.

    Args:
        value: The secret, e.g. an API key read from the environment.
    """
    global _secrets_pattern  # noqa: PLW0603 -- one process-wide registry, swapped atomically
    if value is None:
        return
    value = value.strip()
    if len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def clear_registered_secrets() -> None:
    """Forget every registered secret (for tests; patterns stay active)."""
    global _secrets_pattern  # noqa: PLW0603 -- see register_secret
    with _lock:
        _secrets.clear()
        _secrets_pattern = None


def redact(text: str) -> str:
    """Return ``text`` with registered secrets and credential-shaped substrings masked.

    Args:
        text: Any text: a log message, an exception message, a header dump.

    Returns:
        The text with each secret replaced by ``[REDACTED]``.
    """
    secrets = _secrets_pattern
    if secrets is not None:
        text = secrets.sub(REDACTED, text)
    if text.isascii():
        lowered = text.lower()
        for trigger in _TRIGGERS:
            if trigger in lowered:
                break
        else:
            return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_names: dict[str, tuple[re.Pattern[str] | None, str]] = {}
_MAX_NAMES = 4096


def redact_name(name: str) -> str:
    """:func:`redact` for text that repeats, such as a mapping's keys: the result is kept
    (up to 4,096 names) and used again while no secret has been registered since."""
    secrets = _secrets_pattern
    known = _names.get(name)
    if known is not None and known[0] is secrets:
        return known[1]
    redacted = redact(name)
    if known is not None or len(_names) < _MAX_NAMES:
        _names[name] = (secrets, redacted)
    return redacted


def redact_value(value: Any, fields: AbstractSet[str] = frozenset()) -> Any:  # noqa: PLR0911 -- one return per type
    """``value`` in JSON's types with every string in it redacted, keys included, at any depth.

    A mapping's keys become strings, a tuple a list, a pydantic model its JSON dump, and
    anything else JSON has no type for (an exception, a dataclass, a date) its redacted
    ``str()``; a lone surrogate becomes U+FFFD, so any UTF-8 encoder takes the result. The
    value of a key in ``fields`` is replaced by :data:`REDACTED` whole.
    """
    kind = type(value)  # the JSON types first, by exact type: the ABC checks cost more
    if kind is str:
        return redact(valid_text(value))  # never a key that reached the library
    if kind is dict or isinstance(value, Mapping):  # a key is text too: a secret can be one
        return {
            redact_name(k if type(k) is str and k.isascii() else valid_text(str(k))): (
                REDACTED if k in fields else redact_value(v, fields)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(v, fields) for v in value]
    if isinstance(value, str):
        return redact(valid_text(value))  # never a key that reached the library
    if value is None or isinstance(value, bool | int | float):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return redact_value(dump(mode="json"), fields)
    return redact(valid_text(str(value)))


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message, exception and stack.

    Attach it to a *handler* (handler filters see records from every child logger; logger
    filters do not). :func:`llm_server.core.telemetry.configure_json_logging` does this for you.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
