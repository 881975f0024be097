"""Media: images and structured data flowing through pipelines, and the blocking work they need.

::

    bytes / base64 / data: URL / PIL image
        ──> ImageProcessor (header checks before decoding, EXIF orientation, resize, convert)
        ──> ProcessedImage ──> dspy.Image for a vision model
    dict / list / JSON text / pydantic model
        ──> StructuredValidator / validate_structured ──> a validated pydantic model
    Pillow and file I/O ──> run_blocking: anyio worker threads behind the library's own
        limiter, never the loop's default executor that DSPy's calls hop through

Its modules (private; the step classes are public at
:mod:`llm_server.core.implementations`, the rest here):

- ``_images``, ``_image_input``, ``_image_ops``: the image step, safe opening, the transform;
- ``_structured``: validation of STRUCTURED data and DSPy typed outputs;
- ``_blocking``: :func:`run_blocking` and its per-loop limiter.
"""

from llm_server.core.media._blocking import configure_blocking, run_blocking
from llm_server.core.media._images import ProcessedImage, to_dspy_image
from llm_server.core.media._structured import validate_structured

__all__ = [
    "ProcessedImage",
    "configure_blocking",
    "run_blocking",
    "to_dspy_image",
    "validate_structured",
]
