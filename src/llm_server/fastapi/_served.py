"""Programs served through another protocol (OpenAI chat completions, MCP tools) (private).

Each protocol maps its request onto the program route's own request model (built from the
signature by :func:`~llm_server.fastapi.signature_models`) and runs it on the program route's
machinery: the cached pipeline of the served (or a named) version on the composed model stack,
the same breaker check, metrics, log context and envelope. Only the wire format differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from llm_server.core.errors import ConfigurationError
from llm_server.core.types import MediaType, PipelineData
from llm_server.fastapi._canary_serving import Picked, pick_version
from llm_server.fastapi._endpoints import _ProgramRunner, _Route, run_recorded
from llm_server.fastapi._signature_models import _signature_of, signature_models

__all__ = ["ServedProgram", "served_programs"]


def _is_text(info: Any) -> bool:
    return info.annotation is str


@dataclass(frozen=True, slots=True)
class ServedProgram:
    """One program as another protocol sees it: its models, field names and runner."""

    program_id: str
    description: str | None
    request_model: type[BaseModel]
    """The program route's request model: the inputs plus an optional ``model_id``."""
    data_model: type[BaseModel]
    """The program route's response data: the outputs."""
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    text_input: str | None
    """The only input field, when it takes a string (a message's text goes there as is)."""
    text_output: str | None
    """The only output field, when it is a string (the answer is its text as is)."""
    runner: _ProgramRunner

    def pick(self, manager: Any, request: Request | None, version: str | None) -> Picked | None:
        """The version a call runs when it names none: a running canary's share or the
        served one, as on the program route (``None`` for a named ``version``)."""
        return None if version else pick_version(manager, self.program_id, request)

    def route(
        self,
        manager: Any,
        model_id: str,
        version: str | None = None,
        *,
        picked: Picked | None = None,
    ) -> _Route:
        """The cached pipeline of the served version (or ``version``, or the ``picked``
        one) on ``model_id``."""
        if picked is not None:
            return self.runner.route(manager, model_id, metadata=picked.metadata)
        return self.runner.route(manager, model_id, version)

    async def run(
        self, manager: Any, route: _Route, body: BaseModel, *, picked: Picked | None = None
    ) -> dict[str, Any]:
        """Run the program on a validated request body; the program route's envelope
        (with ``picked``, counted in the version's live figures)."""
        model_id: str = getattr(body, "model_id")  # noqa: B009 -- a field of the built model
        # Values as validated (not dumped), so typed inputs reach the program as their types.
        data = PipelineData(
            media_type=MediaType.STRUCTURED,
            content={name: getattr(body, name) for name in self.input_names},
        )
        return await run_recorded(
            manager, self.program_id, route, data, model_id=model_id, picked=picked
        )


def served_programs(
    programs: Mapping[str, Any], *, default_model_id: str
) -> dict[str, ServedProgram]:
    """Build each program's view once, when the app is built.

    Args:
        programs: Program id -> its signature, or its module class (a module with one
            predictor), as ``add_program_endpoint(signature=...)`` takes it.
        default_model_id: The model a request runs on when it names none.

    Raises:
        ConfigurationError: No programs, or a signature cannot be expressed as JSON.
    """
    if not programs:
        raise ConfigurationError("no programs to serve: pass programs={program_id: signature}")
    served: dict[str, ServedProgram] = {}
    for program_id, given in programs.items():
        signature = _signature_of(given)
        request_model, data_model = signature_models(
            signature, program_id=program_id, default_model_id=default_model_id
        )
        inputs, outputs = dict(signature.input_fields), dict(signature.output_fields)
        only_input = next(iter(inputs.items())) if len(inputs) == 1 else None
        only_output = next(iter(outputs.items())) if len(outputs) == 1 else None
        served[program_id] = ServedProgram(
            program_id=program_id,
            description=(signature.__doc__ or "").strip() or None,
            request_model=request_model,
            data_model=data_model,
            input_names=tuple(inputs),
            output_names=tuple(outputs),
            text_input=only_input[0] if only_input and _is_text(only_input[1]) else None,
            text_output=only_output[0] if only_output and _is_text(only_output[1]) else None,
            runner=_ProgramRunner(program_id),
        )
    return served
