"""DSPy-facing helpers of the program manager: build programs, describe and check their state.

DSPy is imported inside the functions, so importing the program manager stays light.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

from llm_server._offline import ensure_offline
from llm_server.core.errors import CorruptProgramError, ProgramError

__all__ = [
    "ProgramKind",
    "apply_state",
    "check_state_shape",
    "class_path",
    "dspy_version",
    "instantiate",
    "predict_class",
    "program_kind",
    "signature_fields",
]

ProgramKind = Literal["signature", "module"]
SignatureFields = dict[str, dict[str, list[str]]]


def _dspy() -> Any:
    ensure_offline()
    import dspy

    return dspy


def dspy_version() -> str:
    """The installed DSPy version (saved state is only compatible within a major version)."""
    return str(_dspy().__version__)


def predict_class() -> type:
    """``dspy.Predict`` (imported lazily)."""
    predict: type = _dspy().Predict
    return predict


def class_path(program_class: type) -> str:
    """``module.QualName`` of a class, as recorded in manifests."""
    return f"{program_class.__module__}.{program_class.__qualname__}"


def program_kind(program_class: object) -> ProgramKind:
    """Whether ``program_class`` is a ``dspy.Signature`` or a ``dspy.Module`` subclass.

    Raises:
        ProgramError: It is neither.
    """
    dspy = _dspy()
    if isinstance(program_class, type):
        if issubclass(program_class, dspy.Signature):
            return "signature"
        if issubclass(program_class, dspy.Module):
            return "module"
    raise ProgramError(
        f"program_class must be a dspy.Signature or dspy.Module subclass, not {program_class!r}"
    )


def instantiate(program_class: type, kind: ProgramKind) -> Any:
    """A fresh program: ``dspy.Predict(signature)`` or ``module_class()``.

    Raises:
        ProgramError: The module class cannot be built without arguments.
    """
    if kind == "signature":
        return _dspy().Predict(program_class)
    try:
        return program_class()
    except Exception as exc:
        raise ProgramError(
            f"cannot build {class_path(program_class)}() without arguments: {exc}"
        ) from exc


def signature_fields(program: Any) -> SignatureFields:
    """Input and output field names of every predictor in ``program``, by predictor name."""
    return {
        name: {
            "inputs": list(predictor.signature.input_fields),
            "outputs": list(predictor.signature.output_fields),
        }
        for name, predictor in program.named_predictors()
    }


def check_state_shape(
    state: Mapping[str, Any], fresh: Mapping[str, Any], where: str, *, kind: ProgramKind
) -> None:
    """Refuse state whose predictors or keys differ from a freshly built program's.

    A ``dspy.Predict`` dumps one predictor's state; a module dumps ``{predictor name: state}``.
    ``Predict.load_state`` sets every unknown key as an attribute, so unexpected keys are
    refused rather than passed on.

    Raises:
        CorruptProgramError: The shapes differ; the message names ``where``.
    """
    if kind == "signature":
        _check_predictor_state("self", state, fresh, where)
        return
    if set(state) != set(fresh):
        raise CorruptProgramError(
            f"{where}: state holds predictors {sorted(state)}, the program has {sorted(fresh)}"
        )
    for name, predictor_state in state.items():
        _check_predictor_state(name, predictor_state, fresh[name], where)


def _check_predictor_state(name: str, state: object, fresh: Mapping[str, Any], where: str) -> None:
    if not isinstance(state, Mapping):
        raise CorruptProgramError(f"{where}: state of predictor {name!r} is not an object")
    unexpected = set(state) - set(fresh) - {"fields"}
    missing = {"demos", "signature"} & (set(fresh) - set(state))
    if unexpected or missing:
        raise CorruptProgramError(
            f"{where}: state of predictor {name!r} has unexpected keys {sorted(unexpected)} "
            f"or lacks {sorted(missing)}"
        )


def apply_state(program: Any, state: Mapping[str, Any], where: str) -> Any:
    """Load ``state`` into ``program`` (LM endpoints in the state stay untrusted) and return it.

    Raises:
        CorruptProgramError: DSPy refused the state; the message names ``where``.
    """
    try:
        # A deep copy: DSPy keeps the demo lists it is given, and cached state must not change.
        program.load_state(copy.deepcopy(dict(state)))
    except Exception as exc:
        raise CorruptProgramError(f"{where}: DSPy cannot load this state: {exc!r}") from exc
    return program
