"""Random ids for every request (execution ids, fallback trace ids) without a system call.

``os.urandom`` is a system call that releases the GIL: on a busy event loop the thread that
calls it per request can lose the GIL to a worker thread (DSPy hops to threads on every call)
and wait for it back. These ids need uniqueness, not secrecy, so they come from a private
Mersenne Twister seeded from the OS, as OpenTelemetry's own id generator does. The generator
is reseeded in a forked child, so worker processes never share a sequence, and seeding the
global ``random`` module (as tests do) does not make the ids repeat.
"""

from __future__ import annotations

import os
import random

__all__ = ["new_uuid4", "random_hex128"]

_rng = random.Random()  # seeded from os.urandom
os.register_at_fork(after_in_child=_rng.seed)
_getrandbits = _rng.getrandbits

# Version 4 and the RFC 4122 variant, set in a random 128-bit integer.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def random_hex128() -> str:
    """128 random bits as 32 lowercase hex digits (never all zeros: a valid trace id)."""
    return f"{_getrandbits(128) or 1:032x}"


def new_uuid4() -> str:
    """A random version-4 UUID in its canonical 36-character form."""
    h = f"{_getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
