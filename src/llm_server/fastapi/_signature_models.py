"""Request and response-data models built from a DSPy signature (private; public name
re-exported by :mod:`llm_server.fastapi`)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from llm_server.core.errors import ConfigurationError

__all__ = ["signature_models"]


def _signature_of(program: Any) -> Any:
    """The signature of a signature class, a module class or a module instance."""
    import dspy

    if isinstance(program, type) and issubclass(program, dspy.Signature):
        return program
    if isinstance(program, type) and issubclass(program, dspy.Module):
        program = program()
    signature = getattr(program, "signature", None)
    if signature is not None:
        return signature
    predictors = program.predictors() if hasattr(program, "predictors") else []
    if len(predictors) == 1:
        return predictors[0].signature
    raise ConfigurationError(
        f"cannot infer the signature of {type(program).__name__}: it has "
        f"{len(predictors)} predictors; pass signature=<the signature class> instead"
    )


def _camel(program_id: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", program_id) if part)


def _allows_none(annotation: Any) -> bool:
    if annotation is None or annotation is types.NoneType:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_allows_none(arg) for arg in typing.get_args(annotation))
    return False


def _fields(items: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, info in items.items():
        annotation = info.annotation if info.annotation is not None else str
        extra = info.json_schema_extra or {}
        desc = extra.get("desc") if isinstance(extra, dict) else None
        # DSPy's placeholder description is "${name}": not worth showing in OpenAPI.
        description = desc if isinstance(desc, str) and desc != f"${{{name}}}" else None
        default = None if _allows_none(annotation) else ...
        result[name] = (annotation, Field(default, description=description))
    return result


def signature_models(
    signature: Any, *, program_id: str, default_model_id: str
) -> tuple[type[BaseModel], type[BaseModel]]:
    """Build the request and response-data models from a DSPy signature.

    The request has one field per signature input (typed by its annotation, described by its
    ``desc``; optional when the annotation allows ``None``) plus ``model_id``, and refuses
    unknown fields; the response data has one field per output.

    Raises:
        ConfigurationError: A field is named ``model_id``, or its type has no JSON schema.
    """
    inputs, outputs = dict(signature.input_fields), dict(signature.output_fields)
    if "model_id" in inputs:
        raise ConfigurationError(
            f"program {program_id!r}: an input field named 'model_id' clashes with the "
            "endpoint's model selector; rename the field"
        )
    base = _camel(program_id)
    try:
        request_model = create_model(
            f"{base}Request",
            __config__=ConfigDict(extra="forbid", protected_namespaces=()),
            model_id=(str, Field(default=default_model_id, description="A configured model id")),
            **_fields(inputs),
        )
        data_model = create_model(
            f"{base}Data", __config__=ConfigDict(protected_namespaces=()), **_fields(outputs)
        )
        # Building the schema now surfaces field types that cannot be JSON at startup.
        request_model.model_json_schema()
        data_model.model_json_schema()
    except Exception as exc:
        raise ConfigurationError(
            f"program {program_id!r}: cannot build HTTP models from its signature: {exc}"
        ) from exc
    return request_model, data_model
