"""Structural protocol checks for hot paths, cached per class.

``isinstance(obj, SomeRuntimeCheckableProtocol)`` walks every protocol member on every call
(~15-20 us each on these machines); the reference app builds a ``ModelProcessor`` and a
``Pipeline`` per request, which made those checks one of the library's largest per-request
costs. A class that defines every member of the protocol itself (methods, properties, class
attributes) makes all of its instances conform, so the answer is remembered for that class.
A class whose instances set members in ``__init__`` is checked in full every time, exactly as
``isinstance`` would.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["conforms"]

_conforming: set[tuple[type, type]] = set()


@functools.cache
def _members(protocol: type) -> frozenset[str]:
    """The public members a protocol declares: methods, properties and annotated attributes."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base in (object,) or base.__module__ == "typing":
            continue
        names.update(name for name in vars(base) if not name.startswith("_"))
        names.update(name for name in vars(base).get("__annotations__", {}) if name[0] != "_")
    return frozenset(names)


def conforms(obj: Any, protocol: type) -> bool:
    """``isinstance(obj, protocol)`` for a runtime-checkable protocol, cached per class."""
    cls = type(obj)
    key = (cls, protocol)
    if key in _conforming:
        return True
    if not isinstance(obj, protocol):
        return False
    if all(hasattr(cls, name) for name in _members(protocol)):
        _conforming.add(key)  # set.add is atomic: no lock needed across threads
    return True
