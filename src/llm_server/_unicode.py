"""Text every UTF-8 encoder takes (private)."""

from __future__ import annotations

__all__ = ["valid_text"]


def valid_text(text: str) -> str:
    """``text``, with each lone surrogate (half of a UTF-16 pair: a model's JSON escape of half
    an emoji parses into one, and no UTF-8 encoder, response or store takes it) replaced by
    U+FFFD; the same object when there is none."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
