"""Image input for vision models: a fast, hostile-input-safe :class:`ImageProcessor` step.

The step accepts IMAGE data as raw bytes, base64 text, a ``data:`` URL, a PIL image, or a
:class:`ProcessedImage`; it checks the input (bytes, format, then pixel count from the header,
before anything is decoded), applies the EXIF orientation, resizes to fit ``max_size``,
converts the format and strips metadata. Its output content is a :class:`ProcessedImage`;
:func:`to_dspy_image` turns that into the ``dspy.Image`` a vision model receives.

Errors (all :class:`~llm_server.core.errors.InputError`, so hosts answer 4xx)::

    too many bytes or pixels (decompression bombs)      PayloadTooLargeError   413
    format not allowed, remote URL, refused animation   UnsupportedMediaError  415
    empty, corrupt, truncated, zero-size, bad base64    UndecodableInputError  422

Pillow is imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llm_server.core.errors import ConfigurationError, UnsupportedMediaError
from llm_server.core.media._blocking import run_blocking
from llm_server.core.types import MediaType, PipelineData

if TYPE_CHECKING:
    import anyio
    import dspy
    from PIL.Image import Image as PILImage

    from llm_server.core.media._image_ops import ImageOptions

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "ImageProcessor",
    "OutputFormat",
    "ProcessedImage",
    "to_dspy_image",
]

OutputFormat = Literal["JPEG", "PNG", "WEBP"]
DEFAULT_ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF"})
"""Input formats accepted unless ``allowed_formats`` says otherwise."""
_MIB = 1024 * 1024
_OUTPUT_FORMATS = {"JPEG": "JPEG", "JPG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """An encoded image, ready to send to a model.

    Attributes:
        data: The encoded bytes.
        format: ``"JPEG"``, ``"PNG"``, ``"WEBP"`` or ``"GIF"``.
        width: Width in pixels.
        height: Height in pixels.
    """

    data: bytes = field(repr=False)
    format: str
    width: int
    height: int

    @property
    def mime_type(self) -> str:
        """The MIME type, e.g. ``image/jpeg``."""
        return f"image/{self.format.lower()}"

    def to_base64(self) -> str:
        """The bytes as standard base64 text."""
        return base64.b64encode(self.data).decode("ascii")

    def to_data_url(self) -> str:
        """A ``data:`` URL, the form OpenAI-style ``image_url`` parts take."""
        return f"data:{self.mime_type};base64,{self.to_base64()}"

    def __repr__(self) -> str:
        return (
            f"ProcessedImage(format={self.format!r}, width={self.width}, "
            f"height={self.height}, bytes={len(self.data)})"
        )


def _output_format(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _OUTPUT_FORMATS[value.upper()]
    except KeyError:
        raise ConfigurationError(
            f"ImageProcessor output_format must be JPEG, PNG, WEBP or None, got {value!r}"
        ) from None


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"ImageProcessor {name} must be positive, got {value!r}")


class ImageProcessor:
    """A pipeline step that checks, orients, resizes, converts and strips one image.

    Args:
        max_size: Fit within ``(width, height)``, keeping the aspect ratio; ``None`` keeps
            the size.
        output_format: ``"JPEG"``, ``"PNG"``, ``"WEBP"``, or ``None`` to keep the input's
            format (formats we cannot write become PNG).
        quality: JPEG/WEBP quality, 1-100 (above 95 mostly adds bytes).
        optimize: Spend more CPU for smaller files (JPEG Huffman tables, PNG, WEBP method 6).
        upscale: Enlarge images smaller than ``max_size`` too.
        strip_metadata: Drop EXIF (GPS, camera, ...), XMP and comments. A colour profile is
            converted to sRGB rather than dropped, so colours stay right.
        background: RGB colour transparent pixels are flattened onto for JPEG output.
        max_input_bytes: Larger input raises ``PayloadTooLargeError`` (before decoding base64).
        max_pixels: Images with more pixels raise ``PayloadTooLargeError``; checked from the
            header, before decoding (decompression bombs).
        allowed_formats: Input formats (Pillow names) accepted; others raise
            ``UnsupportedMediaError``.
        animated: ``"first_frame"`` uses the first frame of an animated GIF/PNG/WEBP;
            ``"refuse"`` raises ``UnsupportedMediaError``.
        reducing_gap: How much larger than the target the reduced-size decode must stay
            (1.0: fastest; 2.0 or 3.0: closer to a full-size LANCZOS resize); ``None`` decodes
            at full size.
        limiter: Bounds concurrent image work; defaults to the framework's blocking limiter.
        name: The step's name in timings and traces.

    Raises:
        ConfigurationError: An option is invalid.
    """

    accepted_media_types: Sequence[MediaType] = (MediaType.IMAGE,)
    output_media_type: MediaType = MediaType.IMAGE

    def __init__(
        self,
        max_size: tuple[int, int] | None = (800, 800),
        *,
        output_format: OutputFormat | str | None = "JPEG",
        quality: int = 85,
        optimize: bool = False,
        upscale: bool = False,
        strip_metadata: bool = True,
        background: tuple[int, int, int] = (255, 255, 255),
        max_input_bytes: int = 20 * _MIB,
        max_pixels: int = 50_000_000,
        allowed_formats: Collection[str] = DEFAULT_ALLOWED_FORMATS,
        animated: Literal["first_frame", "refuse"] = "first_frame",
        reducing_gap: float | None = 1.0,
        limiter: anyio.CapacityLimiter | None = None,
        name: str = "image_processor",
    ) -> None:
        from llm_server.core.media._image_ops import ImageOptions

        if max_size is not None:
            _positive("max_size width", max_size[0])
            _positive("max_size height", max_size[1])
        if not 1 <= quality <= 100:
            raise ConfigurationError(f"ImageProcessor quality must be 1-100, got {quality}")
        _positive("max_input_bytes", max_input_bytes)
        _positive("max_pixels", max_pixels)
        if reducing_gap is not None and reducing_gap < 1.0:
            raise ConfigurationError("ImageProcessor reducing_gap must be >= 1.0 or None")
        if animated not in ("first_frame", "refuse"):
            raise ConfigurationError("ImageProcessor animated must be 'first_frame' or 'refuse'")
        if len(background) != 3 or not all(0 <= c <= 255 for c in background):
            raise ConfigurationError("ImageProcessor background must be an RGB triple")
        self.name = name
        self._limiter = limiter
        self.options: ImageOptions = ImageOptions(
            max_size=None if max_size is None else (int(max_size[0]), int(max_size[1])),
            output_format=_output_format(output_format),
            quality=quality,
            optimize=optimize,
            upscale=upscale,
            strip_metadata=strip_metadata,
            background=(int(background[0]), int(background[1]), int(background[2])),
            max_input_bytes=max_input_bytes,
            max_pixels=max_pixels,
            allowed_formats=frozenset(f.upper() for f in allowed_formats),
            refuse_animated=animated == "refuse",
            reducing_gap=reducing_gap,
        )

    async def process(self, data: PipelineData) -> PipelineData:
        """Process ``data.content`` off the event loop.

        Returns:
            IMAGE data whose content is a :class:`ProcessedImage`, with
            ``metadata["image"]`` recording the original and final format, size and bytes.

        Raises:
            PayloadTooLargeError, UnsupportedMediaError, UndecodableInputError: Bad input.
        """
        image, report = await run_blocking(self.process_sync, data.content, limiter=self._limiter)
        return data.evolve(content=image, metadata={"image": report})

    def process_sync(self, content: Any) -> tuple[ProcessedImage, dict[str, Any]]:
        """The blocking core of :meth:`process`: call it from a worker thread only.

        Returns:
            The processed image and the report stored as ``metadata["image"]``.
        """
        from llm_server.core.media._image_ops import transform

        raw = _raw_input(content, self.options.max_input_bytes)
        result = transform(raw, self.options)
        return ProcessedImage(result.data, result.format, result.width, result.height), (
            result.report
        )

    def __repr__(self) -> str:
        o = self.options
        return (
            f"ImageProcessor(max_size={o.max_size!r}, output_format={o.output_format!r}, "
            f"quality={o.quality})"
        )


def _raw_input(content: Any, max_input_bytes: int) -> bytes | PILImage:
    """Bytes or a PIL image from any accepted IMAGE content."""
    from PIL import Image

    from llm_server.core.media._image_input import decode_text

    if isinstance(content, ProcessedImage):
        return content.data
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    if isinstance(content, str):
        return decode_text(content, max_input_bytes=max_input_bytes)
    if isinstance(content, Image.Image):
        return content
    raise UnsupportedMediaError(
        f"IMAGE content must be bytes, base64 text, a data URL or a PIL image, "
        f"not {type(content).__name__}"
    )


def to_dspy_image(value: Any) -> dspy.Image:
    """The ``dspy.Image`` for IMAGE content, carrying exactly these bytes (no re-encoding).

    Use it to put a processed image into a DSPy signature's ``dspy.Image`` input field. DSPy
    sends it as an OpenAI ``image_url`` part with this data URL, or as an Anthropic base64
    ``image`` block with the same bytes.

    Args:
        value: A :class:`ProcessedImage`, IMAGE :class:`PipelineData`, image bytes, base64
            text, a data URL, a PIL image, or a ``dspy.Image``.

    Raises:
        UnsupportedMediaError: ``value`` is not image content, or its bytes are in no
            format we can name.
        UndecodableInputError: Invalid base64 or data URL.
    """
    from llm_server._offline import ensure_offline

    ensure_offline()
    import dspy

    if isinstance(value, PipelineData):
        value = value.content
    if isinstance(value, dspy.Image):
        return value
    if isinstance(value, ProcessedImage):
        return dspy.Image(value.to_data_url())
    if isinstance(value, str) and value.lstrip()[:5].lower() == "data:":
        return dspy.Image(value.strip())
    raw = _raw_input(value, max_input_bytes=2**62)
    if not isinstance(raw, bytes):
        return dspy.Image(raw)  # a PIL image: DSPy encodes it in its own format (PNG if none)
    from PIL import Image

    from llm_server.core.media._image_input import sniff_format

    fmt = sniff_format(raw)
    mime = Image.MIME.get(fmt) if fmt is not None else None
    if mime is None:
        raise UnsupportedMediaError("bytes are not an image format that can be named")
    return dspy.Image(f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}")
