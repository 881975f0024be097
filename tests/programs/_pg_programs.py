"""What the PostgreSQL program-store tests share: a signature, a stand-in model manager, and
programs with a demo (so that two versions differ)."""

from __future__ import annotations

from typing import Any

import dspy

from llm_server.models.program_manager import ProgramManager
from llm_server.postgres import PostgresStorageAdapter


class Answer(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class StandIn:
    """The one thing a ProgramManager asks of its model manager here: a backend per program."""

    def __init__(self) -> None:
        self.model_info: dict[str, Any] = {}

    def reliable_backend(self, program: Any, model_id: str, *, program_metadata: Any = None) -> Any:
        return program_metadata


def manager_on(store: PostgresStorageAdapter) -> ProgramManager:
    """A program manager on ``store`` with :class:`Answer` registered (one "process")."""
    manager = ProgramManager(model_manager=StandIn(), storage_adapter=store)
    manager.register_program(Answer)
    return manager


def with_demo(text: str) -> Any:
    """An :class:`Answer` predictor whose one demo holds ``text``: a distinct version."""
    program = dspy.Predict(Answer)
    program.demos = [dspy.Example(question=text, answer=text).with_inputs("question")]
    return program


def served(manager: ProgramManager) -> str:
    """The version of ``answer`` the manager serves."""
    return manager.registry.get_program_metadata("answer").version
