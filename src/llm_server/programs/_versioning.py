"""Helpers shared by program storage and the program manager (no DSPy import here).

- identifier validation: program ids and version names become folder names, so they are
  checked against a strict allow-list before any path is built from them;
- version numbering: versions are ``MAJOR.MINOR.PATCH`` strings; new versions bump MINOR of
  the highest stored version (``1.0.0``, ``1.1.0``, ``1.2.0``, ...);
- canonical JSON and sha256 hashing of program state and training data;
- releases: which version a rollback returns to (the same rule for every storage).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llm_server.core.errors import InvalidIdentifierError, ProgramError

__all__ = [
    "FIRST_VERSION",
    "MAX_ID_LENGTH",
    "canonical_json",
    "check_score",
    "derive_program_id",
    "hash_trainset",
    "is_version",
    "next_version",
    "release_stack",
    "sha256_hex",
    "sort_versions",
    "validate_program_id",
    "validate_version",
    "version_key",
]

FIRST_VERSION = "1.0.0"
MAX_ID_LENGTH = 100
"""Program ids longer than this are refused (folder names must stay well under NAME_MAX)."""

# Lowercase only: ids become folder names, and on case-insensitive file systems (macOS,
# Windows) "Foo" and "foo" would silently share one folder.
_PROGRAM_ID = re.compile(r"[a-z0-9][a-z0-9_\-.]*")
_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def validate_program_id(program_id: object) -> str:
    """Return ``program_id`` if it is a safe folder name, else raise.

    Allowed: lowercase letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit,
    at most :data:`MAX_ID_LENGTH` characters, and no ``..``. This rules out path separators,
    absolute paths, NUL, traversal and hidden (dot) names.

    Raises:
        InvalidIdentifierError: The id is not a safe name.
    """
    if not isinstance(program_id, str):
        raise InvalidIdentifierError(
            f"program id must be a string, not {type(program_id).__name__}"
        )
    if not program_id:
        raise InvalidIdentifierError("program id must not be empty")
    if len(program_id) > MAX_ID_LENGTH:
        raise InvalidIdentifierError(
            f"program id is {len(program_id)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if not _PROGRAM_ID.fullmatch(program_id) or ".." in program_id:
        raise InvalidIdentifierError(
            f"invalid program id {program_id!r}: use lowercase letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    return program_id


def validate_version(version: object) -> str:
    """Return ``version`` if it is a ``MAJOR.MINOR.PATCH`` string, else raise.

    Raises:
        InvalidIdentifierError: The version is not of that form.
    """
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        shown = repr(version)[:120]
        raise InvalidIdentifierError(
            f"invalid program version {shown}: expected MAJOR.MINOR.PATCH such as '1.0.0'"
        )
    return version


def is_version(name: str) -> bool:
    """Whether ``name`` is a valid version name (used to skip unrelated folder entries)."""
    return _VERSION.fullmatch(name) is not None


def version_key(version: str) -> tuple[int, int, int]:
    """The sort key of a valid version name."""
    major, minor, patch = validate_version(version).split(".")
    return int(major), int(minor), int(patch)


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Valid version names, oldest first."""
    return sorted(versions, key=version_key)


def next_version(existing: Iterable[str]) -> str:
    """The version after the highest of ``existing`` (MINOR bumped), or ``1.0.0``."""
    keys = [version_key(v) for v in existing]
    if not keys:
        return FIRST_VERSION
    major, minor, _ = max(keys)
    return f"{major}.{minor + 1}.0"


def release_stack(releases: Iterable[Mapping[str, Any]]) -> list[str]:
    """The versions a rollback can return to, oldest first; the last one is served.

    A promotion pushes its version; a rollback pops one, so rolling back twice after
    ``A -> B -> C`` serves ``B``, then ``A``. ``releases`` is the history oldest first, each
    with ``action`` (``promote`` or ``rollback``) and ``version``.
    """
    stack: list[str] = []
    for release in releases:
        if release["action"] == "rollback" and len(stack) > 1:
            stack.pop()
        elif release["action"] == "promote":
            stack.append(str(release["version"]))
    return stack


def derive_program_id(class_name: str) -> str:
    """The program id for a class name: ``TextSummarizer`` -> ``text_summarizer``."""
    return _CAMEL_BOUNDARY.sub("_", class_name).lower()


def _json_default(value: object) -> Any:
    # pydantic models (dspy.Image, user output types) serialise through their JSON mode.
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    to_dict = getattr(value, "toDict", None)  # dspy.Example
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace, so equal data hashes equally.

    Raises:
        ProgramError: ``value`` holds something JSON cannot represent (objects, NaN, infinity).
    """
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
    except (TypeError, ValueError) as exc:
        raise ProgramError(f"value cannot be stored as JSON: {exc}") from exc
    return text.encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hash_trainset(trainset: Sequence[Any]) -> str:
    """sha256 of the canonical JSON of a training set (``dspy.Example`` objects or mappings).

    The hash depends on the examples' contents and order, not on how they were built.
    """
    rows = [dict(item) if isinstance(item, Mapping) else item for item in trainset]
    return sha256_hex(canonical_json(rows))


def check_score(score: float | None) -> float | None:
    """``score`` as a float, refusing NaN and infinity (they are not JSON)."""
    if score is None:
        return None
    value = float(score)
    if not math.isfinite(value):
        raise ProgramError(f"score must be a finite number, not {score!r}")
    return value
