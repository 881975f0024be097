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

The young generation's threshold is raised too (:func:`raise_young_threshold`): Python
collects it every 700 net allocations, and a worker with many calls in flight (64 open
streams, say) holds tens of thousands of young objects, each collection re-walking them; with
the older generations collected every 10 young ones, that was ~40 ms of collector pauses per
second of streaming in the benchmark, its longest ones in the tail of the time to the first
event. At 7,000 most of a request's objects are freed by reference counting before a
collection looks at them.
"""

from __future__ import annotations

import gc
import logging
import threading

__all__ = [
    "PYTHON_YOUNG_THRESHOLD",
    "freeze_heap",
    "freeze_startup_heap_once",
    "raise_young_threshold",
]

logger = logging.getLogger("llm_server.models")
_lock = threading.Lock()
_frozen_once = False

PYTHON_YOUNG_THRESHOLD = 700
"""Python's own threshold for the young generation (``gc.get_threshold()[0]``)."""


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


def raise_young_threshold(threshold: int) -> bool:
    """Collect the young generation every ``threshold`` net allocations instead of 700.

    Only while the process still has Python's own threshold: a host that tuned its collector
    keeps its setting, and so does a threshold of 0 or less. The older generations' thresholds
    are kept. Returns ``True`` if it changed the threshold.
    """
    with _lock:
        young, *older = gc.get_threshold()
        if threshold <= 0 or young != PYTHON_YOUNG_THRESHOLD or threshold == young:
            return False
        gc.set_threshold(threshold, *older)
    logger.info(
        "garbage collector: young generation collected every %d allocations instead of %d "
        "(LLM_SERVER_GC_YOUNG_THRESHOLD=0 keeps Python's)",
        threshold,
        PYTHON_YOUNG_THRESHOLD,
    )
    return True
