"""Freezing the startup heap, so the garbage collector stops re-scanning it on every request.

With DSPy loaded, a process holds ~110,000 objects that live as long as it does (modules,
DSPy, pydantic schemas, the models). Python's full collections walk all of them: 50-70 ms
each, every few hundred requests on a busy server, which came to ~120-200 µs of CPU per
request in the benchmarks (more than the library's own per-request code). ``gc.freeze()``
moves every object alive now to a permanent generation that collections skip.

The price: objects alive at the freeze that later become *cyclic* garbage are never freed
(objects freed by reference counting, the vast majority, are unaffected). So the automatic
freeze happens once per process, when the first ``ModelManager`` has built its models (the
end of a service's startup), after a full collection; ``LLM_SERVER_GC_FREEZE=false`` turns
it off.
"""

from __future__ import annotations

import gc
import logging
import threading

__all__ = ["freeze_heap", "freeze_startup_heap_once"]

logger = logging.getLogger("llm_server.models")
_lock = threading.Lock()
_frozen_once = False


def freeze_heap() -> int:
    """Collect garbage, then freeze every object alive; returns how many are frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def freeze_startup_heap_once() -> bool:
    """:func:`freeze_heap`, the first time it is called in this process; ``True`` if it ran."""
    global _frozen_once  # noqa: PLW0603 -- once per process, by design
    with _lock:
        if _frozen_once:
            return False
        _frozen_once = True
    frozen = freeze_heap()
    logger.info(
        "startup heap frozen: %d objects are skipped by the garbage collector from now on "
        "(LLM_SERVER_GC_FREEZE=false turns this off)",
        frozen,
    )
    return True
