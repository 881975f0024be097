"""(H+SDK) H with the same OpenTelemetry SDK as F+SDK: the baseline for the SDK's own cost.

FastAPI (0.16x) instruments itself natively once an SDK is configured (a server span and
metrics per request), so part of what F+SDK pays is FastAPI's, not the library's; this app
pays the same.
"""

from __future__ import annotations

from typing import Any


def load_app() -> Any:
    """Configure the SDK (as F+SDK does), then import H."""
    from e2e.apps.f_otel import configure_sdk

    configure_sdk()
    from e2e.apps.h_app import app

    return app
