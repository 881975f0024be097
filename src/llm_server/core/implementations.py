"""The standard pipeline steps.

- :class:`ModelProcessor` and :class:`DefaultOutputProcessor`: call a model.
- :class:`ImageProcessor`: resize, convert and sanitise images before a vision model
  (implemented in :mod:`llm_server.core.media`).
- :class:`StructuredValidator`: validate structured data against a pydantic model
  (implemented in :mod:`llm_server.core.media`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from llm_server.core._conformance import conforms
from llm_server.core.errors import PipelineValidationError
from llm_server.core.media._images import ImageProcessor
from llm_server.core.media._structured import StructuredValidator
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.protocols import ModelBackend
from llm_server.core.types import MediaType, PipelineData

__all__ = [
    "BackendFactory",
    "DefaultOutputProcessor",
    "ImageProcessor",
    "ModelProcessor",
    "OutputProcessor",
    "StructuredValidator",
]


@runtime_checkable
class OutputProcessor(Protocol):
    """Turns a model's output into the data the next step receives."""

    def process(
        self, output: ModelOutput, *, data: PipelineData, output_type: MediaType
    ) -> PipelineData:
        """Build the step's output from ``output``; ``data`` is the step's input."""
        ...


@runtime_checkable
class BackendFactory(Protocol):
    """What :class:`ModelProcessor` needs from a model manager."""

    def backend_for(self, program: Any, model_id: str) -> ModelBackend:
        """A ready (reliability-wrapped) backend running ``program`` on ``model_id``."""
        ...


def _output_fields(prediction: Any) -> dict[str, Any]:
    if isinstance(prediction, Mapping):
        return dict(prediction)
    keys = getattr(prediction, "keys", None)
    if callable(keys):
        return {key: prediction[key] for key in keys()}
    return {"output": prediction}


def _json_compatible(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _json_compatible(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_compatible(v) for v in value]
    return value


class DefaultOutputProcessor:
    """Turns a prediction into TEXT or STRUCTURED data.

    TEXT is the prediction's last output field (for ``ChainOfThought`` that is the answer,
    not the reasoning) as a string; STRUCTURED is every output field, with pydantic values
    dumped to JSON-compatible data. The model that answered and the usage are added to the
    metadata under ``"model_output"``.
    """

    def process(
        self, output: ModelOutput, *, data: PipelineData, output_type: MediaType
    ) -> PipelineData:
        """See :class:`OutputProcessor`."""
        fields = _output_fields(output.content)
        if output_type is MediaType.STRUCTURED:
            content: Any = _json_compatible(fields)
        else:
            content = "" if not fields else fields[list(fields)[-1]]
            if output_type is MediaType.TEXT and not isinstance(content, str):
                content = str(content)
        usage = output.usage
        return data.evolve(
            content=content,
            media_type=output_type,
            metadata={
                "model_output": {
                    "model_id": output.model_id,
                    "input_tokens": usage.input_tokens if usage else None,
                    "output_tokens": usage.output_tokens if usage else None,
                    "cost_usd": output.cost_usd,
                    "latency_ms": output.latency_ms,
                }
            },
        )


class ModelProcessor:
    """A pipeline step that sends its input to a model and passes the answer on.

    Two forms, as in the classic example app::

        ModelProcessor(model_manager=mm, model_id="gpt-4o-mini", signature_class=Predictor,
                       input_key="input", output_processor=DefaultOutputProcessor(),
                       accepted_types=[MediaType.TEXT], output_type=MediaType.TEXT)
        ModelProcessor(backend=my_backend, accepted_types=[MediaType.TEXT],
                       output_type=MediaType.TEXT)

    With a model manager, the backend is the manager's reliability-wrapped backend for the
    signature (or module class) on that model, built once and cached by the manager, so
    constructing a processor per request is cheap.

    The backend's input is ``{input_key: content}``; without ``input_key``, mapping content
    is passed as the keyword inputs. IMAGE content is converted to ``dspy.Image``.

    Args:
        backend: A ready backend (second form).
        model_manager: A model manager (first form).
        model_id: The configured model id (first form).
        signature_class: A ``dspy.Signature`` or ``dspy.Module`` subclass (first form).
        input_key: The signature input field the content goes to.
        output_processor: Builds the output data (default: :class:`DefaultOutputProcessor`).
        accepted_types: Media types this step accepts (default: TEXT).
        output_type: Media type of the output (default: TEXT).
        name: Step name for timings and traces (default: ``"ModelProcessor"``).
    """

    def __init__(
        self,
        backend: ModelBackend | None = None,
        *,
        model_manager: BackendFactory | None = None,
        model_id: str | None = None,
        signature_class: Any = None,
        input_key: str | None = None,
        output_processor: OutputProcessor | None = None,
        accepted_types: Sequence[MediaType] = (MediaType.TEXT,),
        output_type: MediaType = MediaType.TEXT,
        name: str = "ModelProcessor",
    ) -> None:
        if backend is None:
            if model_manager is None or model_id is None or signature_class is None:
                raise PipelineValidationError(
                    "ModelProcessor needs either backend=... or model_manager=..., "
                    "model_id=... and signature_class=..."
                )
            backend = model_manager.backend_for(signature_class, model_id)
        elif model_manager is not None or signature_class is not None:
            raise PipelineValidationError(
                "ModelProcessor takes backend=... or model_manager=/signature_class=, not both"
            )
        if not conforms(backend, ModelBackend):  # cached: processors are often built per request
            raise PipelineValidationError(
                f"ModelProcessor backend {type(backend).__name__} is not a ModelBackend"
            )
        if not accepted_types:
            raise PipelineValidationError("ModelProcessor accepted_types must not be empty")
        self.backend = backend
        self.input_key = input_key
        self.output_processor = output_processor or DefaultOutputProcessor()
        # Processors are often built per request: convert only what is not a member already.
        self._accepted = tuple(t if type(t) is MediaType else MediaType(t) for t in accepted_types)
        self.output_media_type = (
            output_type if type(output_type) is MediaType else MediaType(output_type)
        )
        self.name = name

    @property
    def accepted_media_types(self) -> tuple[MediaType, ...]:
        """The media types this step accepts."""
        return self._accepted

    def _backend_input(self, data: PipelineData) -> Any:
        content = data.content
        if data.media_type is MediaType.IMAGE:
            from llm_server.core.media._images import to_dspy_image

            content = to_dspy_image(content)
        if self.input_key is not None:
            return {self.input_key: content}
        if isinstance(content, Mapping):
            return dict(content)
        return content

    async def process(self, data: PipelineData) -> PipelineData:
        """Call the backend and hand its output to the output processor."""
        output = await self.backend.predict(self._backend_input(data))
        return self.output_processor.process(output, data=data, output_type=self.output_media_type)
