"""Canary releases of program versions: the records, the guard's thresholds, live figures.

A canary serves a stored version to a share of a program's traffic next to the served one,
judged by a :class:`CanaryGuard` and ended by hand or on its own (rolled back or promoted).
Start one with :meth:`ProgramManager.start_canary
<llm_server.models.program_manager.ProgramManager.start_canary>`; the how-to "Shipping a new
version safely" (docs/how-to/canary.md) walks through it.
"""

from __future__ import annotations

from llm_server.programs._canary import Canary, CanaryStorage, LocalCanaryBook
from llm_server.programs._canary_guard import (
    CanaryGuard,
    GuardDecision,
    ScoreFigures,
    decide,
    wilson_interval,
)
from llm_server.programs._version_stats import VersionFigures, VersionStats

__all__ = [
    "Canary",
    "CanaryGuard",
    "CanaryStorage",
    "GuardDecision",
    "LocalCanaryBook",
    "ScoreFigures",
    "VersionFigures",
    "VersionStats",
    "decide",
    "wilson_interval",
]
