"""Structured (JSON-compatible) data in pipelines: validation and DSPy outputs.

- :class:`StructuredValidator` is a step that validates STRUCTURED data (a dict, a list, JSON
  text or another pydantic model) against a pydantic model.
- :func:`validate_structured` is the same check as a function.
- :func:`prediction_to_structured` turns a ``dspy.Prediction`` with typed output fields into
  JSON-compatible data (what ``ModelProcessor`` puts into STRUCTURED output).

Validation failures raise :class:`~llm_server.core.errors.DataValidationError` (HTTP 422): the
message names every failing field path (``items[2].price``) and ``errors`` lists them as
``{"field", "loc", "message", "type"}`` dicts. The rejected values are not repeated (they may
be personal data that would end up in logs).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic
from pydantic_core import PydanticSerializationError, to_jsonable_python

from llm_server.core.errors import DataValidationError, OutputParseError
from llm_server.core.types import MediaType, PipelineData

if TYPE_CHECKING:
    import dspy

__all__ = [
    "StructuredValidator",
    "field_path",
    "prediction_to_structured",
    "validate_structured",
]

M = TypeVar("M", bound=pydantic.BaseModel)
_MAX_LISTED = 20  # errors named in the message; ``.errors`` always has them all


def field_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic error location as a path.

    ``("items", 2, "price")`` becomes ``items[2].price``; the empty location is ``(root)``.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(root)"


def _validation_error(
    model: type[pydantic.BaseModel], exc: pydantic.ValidationError
) -> DataValidationError:
    errors: list[dict[str, object]] = [
        {
            "field": field_path(error["loc"]),
            "loc": list(error["loc"]),
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]
    listed = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:_MAX_LISTED])
    if len(errors) > _MAX_LISTED:
        listed += f"; ... and {len(errors) - _MAX_LISTED} more"
    return DataValidationError(
        f"data does not match {model.__name__} ({len(errors)} error"
        f"{'s' if len(errors) != 1 else ''}): {listed}",
        errors=errors,
    )


def validate_structured(model: type[M], content: Any) -> M:
    """Validate ``content`` against ``model`` and return the model instance.

    Args:
        model: The pydantic model (a ``RootModel`` for top-level lists or scalars).
        content: A mapping, list, JSON text (``str``/``bytes``), or a pydantic model (an
            instance of ``model`` is returned as is; another model is validated by its dump).

    Raises:
        DataValidationError: The data does not match; invalid JSON text is reported the same
            way (field ``(root)``, type ``json_invalid``).
    """
    if isinstance(content, model):
        return content
    if isinstance(content, pydantic.BaseModel):
        content = content.model_dump()
    try:
        if isinstance(content, str | bytes | bytearray):
            return model.model_validate_json(content)
        return model.model_validate(content)
    except pydantic.ValidationError as exc:
        raise _validation_error(model, exc) from None


class StructuredValidator(Generic[M]):
    """A pipeline step that validates STRUCTURED data against a pydantic model.

    It accepts STRUCTURED data, and TEXT holding JSON (what a model step often produces), and
    outputs STRUCTURED data whose content is the validated model instance, or with
    ``as_dict=True`` its JSON-compatible dump (``model_dump(mode="json")``), which is what a
    JSON response or a later dict-based step wants.

    Example::

        class Order(BaseModel):
            sku: str
            quantity: int = Field(gt=0)

        pipeline = Pipeline([StructuredValidator(Order)])

    Args:
        model: The pydantic model.
        as_dict: Output the dump instead of the instance.
        name: The step's name in timings and traces.

    Raises:
        DataValidationError: (from :meth:`process`) the data does not match.
    """

    accepted_media_types: Sequence[MediaType] = (MediaType.STRUCTURED, MediaType.TEXT)
    output_media_type: MediaType = MediaType.STRUCTURED

    def __init__(self, model: type[M], *, as_dict: bool = False, name: str | None = None) -> None:
        self.model = model
        self.as_dict = as_dict
        self.name = name or f"validate_{model.__name__}"

    async def process(self, data: PipelineData) -> PipelineData:
        """Validate ``data.content``; record the model's name in ``metadata["validated_as"]``."""
        instance = validate_structured(self.model, data.content)
        content: Any = instance.model_dump(mode="json") if self.as_dict else instance
        return data.evolve(
            content=content,
            media_type=MediaType.STRUCTURED,
            metadata={"validated_as": self.model.__name__},
        )

    def __repr__(self) -> str:
        return f"StructuredValidator({self.model.__name__}, as_dict={self.as_dict})"


def _output_names(signature: Any) -> list[str]:
    fields = getattr(signature, "output_fields", None)
    if not isinstance(fields, Mapping):
        raise TypeError(f"{signature!r} is not a DSPy signature (no output_fields)")
    return list(fields)


@functools.lru_cache(maxsize=256)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    try:
        return pydantic.TypeAdapter(annotation)
    except pydantic.PydanticSchemaGenerationError:
        return None  # e.g. dspy.Image: serialised by its value's type instead


def _jsonable(value: Any, annotation: Any) -> Any:
    try:
        adapter = _adapter(annotation) if annotation is not None else None
    except TypeError:  # an unhashable annotation: no cache, no adapter
        adapter = None
    if adapter is not None:
        try:
            # warnings=False: a value that does not match its annotation (an LM said "7" for an
            # int) is serialised by its own type instead of warning on every request.
            return adapter.dump_python(value, mode="json", warnings=False)
        except PydanticSerializationError:
            pass
    return to_jsonable_python(value, fallback=str)


def prediction_to_structured(
    prediction: dspy.Prediction, signature: Any | None = None
) -> dict[str, Any]:
    """The output fields of a prediction as JSON-compatible data.

    Pydantic models, dataclasses, enums, dates and lists of them become plain dicts, lists,
    strings and numbers, serialised according to the signature's field annotations.

    Args:
        prediction: What a DSPy program returned.
        signature: The signature (class) whose output fields to take; ``None`` takes every
            field of the prediction.

    Returns:
        ``{field name: JSON-compatible value}`` in the signature's field order.

    Raises:
        OutputParseError: The prediction lacks an output field of the signature.
    """
    if signature is None:
        names = list(prediction.keys())
        annotations: Mapping[str, Any] = {}
    else:
        names = _output_names(signature)
        fields = signature.output_fields
        annotations = {name: fields[name].annotation for name in names}
    result: dict[str, Any] = {}
    for name in names:
        if name not in prediction:
            raise OutputParseError(f"the model's prediction has no output field {name!r}")
        result[name] = _jsonable(prediction[name], annotations.get(name))
    return result
