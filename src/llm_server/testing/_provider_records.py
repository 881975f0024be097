"""What the local provider remembers about each request it received."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["RecordedRequest"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the local provider received it.

    Attributes:
        index: 1-based arrival order since the provider started (not reset by ``clear()``).
        method: HTTP method.
        path: Request path (``/v1/chat/completions``).
        headers: Read-only headers, names lower-cased (they include the API key: this is a
            test double).
        body: The parsed JSON body, or ``None`` when the body was empty or not JSON.
        model: The ``model`` of the body, if any.
        timestamp: Wall-clock arrival time (``time.time()``).
    """

    index: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    model: str | None
    timestamp: float

    @property
    def api(self) -> Literal["openai", "anthropic"] | None:
        """``"openai"``, ``"anthropic"`` or ``None`` (not a chat request)."""
        if self.path.endswith("/chat/completions"):
            return "openai"
        if self.path.endswith("/messages"):
            return "anthropic"
        return None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages of the body (empty when there are none)."""
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed response."""
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    @property
    def images(self) -> list[dict[str, Any]]:
        """Image parts of every message: OpenAI ``image_url`` parts and Anthropic ``image``
        blocks, exactly as sent (data URLs and base64 data included)."""
        found: list[dict[str, Any]] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, list):
                found.extend(
                    part
                    for part in content
                    if isinstance(part, dict) and part.get("type") in {"image_url", "image"}
                )
        return found
