"""(H+freeze) H that also freezes its startup heap, as the library does for F by default.

The library's ``ModelManager`` calls ``gc.collect(); gc.freeze()`` once at startup
(``LLM_SERVER_GC_FREEZE``), which saves F the full collections over DSPy's ~110,000 objects.
A hand-written service rarely does this, so H stays as written; this app shows what the
library's own per-request code costs against an H that took the same step.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


def load_app() -> Any:
    """H, with ``gc.collect(); gc.freeze()`` at the end of its startup."""
    from e2e.apps import h_app

    inner = h_app.lifespan

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with inner(app):
            gc.collect()
            gc.freeze()
            yield

    h_app.app.router.lifespan_context = lifespan
    return h_app.app
