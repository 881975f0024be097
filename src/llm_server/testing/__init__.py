"""Test doubles shipped for users' own tests (and ours).

- ``LocalProvider``: a real OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1 that
  answers in DSPy's adapter format, counts usage with a tokenizer, and injects latency and
  faults on demand. Also runnable from a terminal: ``python -m llm_server.testing --help``.
- ``FakeClock``: an injectable clock whose sleeps return at once and advance time.
- ``ScriptedBackend``: a ``ModelBackend`` that answers or fails from a script.
- ``StaticConfigProvider``: a ``ConfigProvider`` holding its models in memory.

Names are loaded lazily so importing this package costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> private module defining it (filled in as the doubles land)
_EXPORTS: dict[str, str] = {
    "FaultKind": "llm_server.testing._provider",
    "FaultRule": "llm_server.testing._provider",
    "LocalProvider": "llm_server.testing._provider",
    "RawReply": "llm_server.testing._provider",
    "RecordedRequest": "llm_server.testing._provider",
    "Reply": "llm_server.testing._provider",
    "FakeClock": "llm_server.testing._clock",
    "ScriptedBackend": "llm_server.testing._backends",
    "ScriptExhaustedError": "llm_server.testing._backends",
    "StaticConfigProvider": "llm_server.testing._config",
}

__all__ = [  # sorted; tests/test_public_api.py keeps it equal to _EXPORTS
    "FakeClock",
    "FaultKind",
    "FaultRule",
    "LocalProvider",
    "RawReply",
    "RecordedRequest",
    "Reply",
    "ScriptExhaustedError",
    "ScriptedBackend",
    "StaticConfigProvider",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_server.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


# The same names for type checkers and the API reference (import-time loading is lazy, above).
if TYPE_CHECKING:
    from llm_server.testing._backends import ScriptedBackend as ScriptedBackend
    from llm_server.testing._backends import ScriptExhaustedError as ScriptExhaustedError
    from llm_server.testing._clock import FakeClock as FakeClock
    from llm_server.testing._config import StaticConfigProvider as StaticConfigProvider
    from llm_server.testing._provider import FaultKind as FaultKind
    from llm_server.testing._provider import FaultRule as FaultRule
    from llm_server.testing._provider import LocalProvider as LocalProvider
    from llm_server.testing._provider import RawReply as RawReply
    from llm_server.testing._provider import RecordedRequest as RecordedRequest
    from llm_server.testing._provider import Reply as Reply
