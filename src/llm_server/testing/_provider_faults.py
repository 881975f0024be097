"""Latency and fault rules for the local provider, and the error bodies providers send."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, get_args

from llm_server.core.errors import ConfigurationError

__all__ = ["Decision", "FaultKind", "FaultRule", "RuleBook", "error_response"]

FaultKind: TypeAlias = Literal[
    "rate_limit",
    "server_error",
    "unavailable",
    "auth",
    "bad_request",
    "context_window",
    "hang",
    "malformed_json",
    "connection_reset",
]
"""Named faults: ``rate_limit`` (429 with ``Retry-After``), ``server_error`` (500),
``unavailable`` (503), ``auth`` (401), ``bad_request`` (400), ``context_window`` (400 with the
provider's context-length error body), ``hang`` (no answer until the client gives up or the
provider stops), ``malformed_json`` (200 with a truncated JSON body) and ``connection_reset``
(the socket is closed with RST, no response). An ``int`` fault sends that HTTP status."""

_FAULT_KINDS: Final = frozenset(get_args(FaultKind))
# kind -> (status, OpenAI error type, Anthropic error type, OpenAI error code, message)
_STATUS_FAULTS: Final[dict[str, tuple[int, str, str, str | None, str]]] = {
    "rate_limit": (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded",
                   "Rate limit reached for requests (local provider fault)."),
    "server_error": (500, "server_error", "api_error", None,
                     "The server had an error processing your request (local provider fault)."),
    "unavailable": (503, "server_error", "overloaded_error", None,
                    "The engine is currently overloaded (local provider fault)."),
    "auth": (401, "invalid_request_error", "authentication_error", "invalid_api_key",
             "Incorrect API key provided (local provider fault)."),
    "bad_request": (400, "invalid_request_error", "invalid_request_error", None,
                    "Invalid request (local provider fault)."),
}  # fmt: skip
_GENERIC_TYPES: Final = {400: "invalid_request_error", 401: "authentication_error",
                         403: "permission_error", 404: "not_found_error",
                         429: "rate_limit_error"}  # fmt: skip
_DEFAULT_RETRY_AFTER_S: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class FaultRule:
    """When to add latency or a fault to a request. Compared by identity.

    A rule applies to requests matching ``model`` and ``path`` (``None`` matches all); of
    those, it fires on the ``nth`` one, on the ``first`` N, with ``probability`` (the
    provider's seeded RNG), or on every one when none of these is set (they combine with AND).

    Attributes:
        fault: What goes wrong when the rule fires, or ``None`` for latency only.
        latency_s: Seconds to wait before answering when the rule fires.
        model: Model name as sent (``gpt-4o-mini``; a provider prefix is ignored).
        path: Matches a request path equal to or ending with it (``/messages``).
        nth: Fire on the nth matching request only (1-based, counted from when added).
        first: Fire on the first N matching requests only.
        probability: Fire with this probability.
        retry_after_s: ``Retry-After`` for ``rate_limit`` (default 1 s) and ``unavailable``.
        message: Error message override.
    """

    fault: FaultKind | int | None = None
    latency_s: float = 0.0
    model: str | None = None
    path: str | None = None
    nth: int | None = None
    first: int | None = None
    probability: float | None = None
    retry_after_s: float | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fault, str) and self.fault not in _FAULT_KINDS:
            raise ConfigurationError(
                f"unknown fault {self.fault!r}; use one of {sorted(_FAULT_KINDS)} or a status"
            )
        if isinstance(self.fault, int) and not 100 <= self.fault <= 599:
            raise ConfigurationError(f"fault status {self.fault} is not an HTTP status")
        checks = {
            "latency_s": self.latency_s >= 0,
            "nth": self.nth is None or self.nth >= 1,
            "first": self.first is None or self.first >= 0,
            "probability": self.probability is None or 0.0 <= self.probability <= 1.0,
            "retry_after_s": self.retry_after_s is None or self.retry_after_s >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigurationError(f"FaultRule {name}={getattr(self, name)!r} is invalid")

    def applies_to(self, model: str | None, path: str) -> bool:
        """Whether a request for ``model`` at ``path`` is one this rule counts."""
        if self.path is not None and not path.endswith(self.path):
            return False
        if self.model is None:
            return True
        return model is not None and (self.model == model or self.model.endswith("/" + model))


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: wait ``latency_s``, then apply ``rule.fault`` if any."""

    latency_s: float
    rule: FaultRule | None


class RuleBook:
    """Thread-safe rule list: tests add and remove rules while the server thread decides."""

    def __init__(self, *, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._matched: dict[FaultRule, int] = {}
        self._fired: dict[FaultRule, int] = {}

    def add(self, rule: FaultRule) -> FaultRule:
        """Append ``rule`` (evaluated after earlier rules)."""
        with self._lock:
            self._rules.append(rule)
            self._matched[rule] = self._fired[rule] = 0
        return rule

    def remove(self, rule: FaultRule) -> None:
        """Remove ``rule``; unknown rules are ignored."""
        with self._lock:
            if rule in self._matched:
                self._rules.remove(rule)
                del self._matched[rule], self._fired[rule]

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()
            self._matched.clear()
            self._fired.clear()

    def fired(self, rule: FaultRule) -> int:
        """How many requests ``rule`` fired on (0 once removed)."""
        with self._lock:
            return self._fired.get(rule, 0)

    @property
    def rules(self) -> Sequence[FaultRule]:
        """A snapshot of the rules, in evaluation order."""
        with self._lock:
            return tuple(self._rules)

    def decide(self, model: str | None, path: str) -> Decision:
        """Count the request against every matching rule; the first fault that fires wins and
        later fault rules do not fire; latencies of the rules that fire add up."""
        if not self._rules:  # lock-free fast path; a racing add applies from the next request
            return Decision(0.0, None)
        latency = 0.0
        chosen: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.applies_to(model, path):
                    continue
                count = self._matched[rule] = self._matched[rule] + 1
                if rule.fault is not None and chosen is not None:
                    continue  # an earlier fault already took this request
                if (
                    (rule.nth is not None and count != rule.nth)
                    or (rule.first is not None and count > rule.first)
                    or (rule.probability is not None and self._rng.random() >= rule.probability)
                ):
                    continue
                self._fired[rule] += 1
                latency += rule.latency_s
                if chosen is None and rule.fault is not None:
                    chosen = rule
        return Decision(latency, chosen)


def error_response(
    rule: FaultRule, *, api: Literal["openai", "anthropic"], prompt_tokens: int
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and JSON body for a status fault, shaped like the real provider's."""
    fault = rule.fault
    headers: list[tuple[str, str]] = []
    code: str | None
    if fault == "context_window":
        status, openai_type, anthropic_type = 400, "invalid_request_error", "invalid_request_error"
        code = None
        limit = max(1, prompt_tokens - 1)
        if api == "openai":
            code = "context_length_exceeded"
            message = (
                f"This model's maximum context length is {limit} tokens. However, your messages "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
            )
        else:
            message = f"prompt is too long: {prompt_tokens} tokens > {limit} maximum"
    elif isinstance(fault, str):
        status, openai_type, anthropic_type, code, message = _STATUS_FAULTS[fault]
    else:
        status = int(fault or 500)
        openai_type = anthropic_type = _GENERIC_TYPES.get(status, "api_error")
        code, message = None, f"HTTP {status} (local provider fault)."
    retry_after = rule.retry_after_s
    if fault == "rate_limit" and retry_after is None:
        retry_after = _DEFAULT_RETRY_AFTER_S
    if retry_after is not None:
        headers.append(("retry-after", str(math.ceil(retry_after))))
        headers.append(("retry-after-ms", str(round(retry_after * 1000))))
    message = rule.message or message
    body: dict[str, Any]
    if api == "openai":
        body = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    else:
        body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    return status, headers, json.dumps(body).encode()
