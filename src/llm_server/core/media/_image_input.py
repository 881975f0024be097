"""Turn untrusted image input into an opened (not yet decoded) Pillow image, safely.

Everything here runs in a worker thread (see :func:`llm_server.core.media.run_blocking`). The order
of the
checks is the point: byte size before base64 decoding, format and pixel count from the header
before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass

from PIL import Image, ImageFile

from llm_server.core.errors import (
    PayloadTooLargeError,
    UndecodableInputError,
    UnsupportedMediaError,
)

__all__ = ["OpenedImage", "decode_text", "open_image", "sniff_format"]

_PREFIX_BYTES = 16  # what Pillow's own ``Image.open`` hands the format sniffers
_HEADER_ERRORS = (SyntaxError, IndexError, TypeError, ValueError, struct.error, OSError, EOFError)


@dataclass(frozen=True, slots=True)
class OpenedImage:
    """A header-checked image whose pixels are not decoded yet.

    Attributes:
        image: The lazily decoding Pillow image.
        format: Its format name (``"JPEG"``, ``"PNG"``, ...; MPO counts as JPEG).
        input_bytes: Size of the encoded input, ``None`` for a PIL image given directly.
        animated: Whether the image has more than one frame.
    """

    image: Image.Image
    format: str | None
    input_bytes: int | None
    animated: bool


def _too_large(kind: str, size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"image {kind} is {size:,}, over the limit of {limit:,}")


def decode_text(text: str, *, max_input_bytes: int) -> bytes:
    """Decode a data URL or bare base64 text into bytes, checking the size first.

    Raises:
        PayloadTooLargeError: The decoded size would exceed ``max_input_bytes``.
        UndecodableInputError: Not a valid data URL or base64.
        UnsupportedMediaError: A remote URL (never fetched: that would let callers make the
            server request arbitrary addresses) or a data URL of a non-image type.
    """
    stripped = text.strip()
    lowered = stripped[:8].lower()
    if lowered.startswith(("http://", "https://")):
        raise UnsupportedMediaError(
            "image URLs are not fetched; send the image bytes, base64 or a data URL"
        )
    payload = stripped
    is_base64 = True
    if lowered.startswith("data:"):
        header, comma, payload = stripped.partition(",")
        if not comma:
            raise UndecodableInputError("invalid data URL: no ',' between header and data")
        params = header[5:].split(";")
        media_type = params[0].strip().lower()
        if (
            media_type
            and not media_type.startswith("image/")
            and media_type != ("application/octet-stream")
        ):
            raise UnsupportedMediaError(f"data URL media type {media_type!r} is not an image")
        is_base64 = any(p.strip().lower() == "base64" for p in params[1:])
    # Base64 is 4 characters per 3 bytes: refuse oversized input before allocating for it.
    estimated = len(payload) * 3 // 4 if is_base64 else len(payload) // 3
    if estimated > max_input_bytes:
        raise _too_large("size in bytes", estimated, max_input_bytes)
    data = urllib.parse.unquote_to_bytes(payload) if not is_base64 else _b64decode(payload)
    if len(data) > max_input_bytes:
        raise _too_large("size in bytes", len(data), max_input_bytes)
    return data


def _b64decode(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    # Slow path for what real clients send: line breaks, URL-safe alphabet, missing padding.
    compact = "".join(payload.split())
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise UndecodableInputError("image is not valid base64 or a data URL") from None


def _accepts(accept: Callable[[bytes], bool | str] | None, prefix: bytes) -> bool:
    """Whether a plugin's magic-byte check claims ``prefix`` (sniffer-less plugins never do:
    they would claim arbitrary bytes)."""
    if accept is None:
        return False
    try:
        result = accept(prefix)
    except _HEADER_ERRORS:  # some sniffers unpack fixed-size fields from short input
        return False
    return bool(result) and not isinstance(result, str)


def sniff_format(data: bytes) -> str | None:
    """The format Pillow's magic-byte checks recognise in ``data``, without parsing it."""
    Image.init()
    prefix = data[:_PREFIX_BYTES]
    for name in Image.ID:
        if _accepts(Image.OPEN[name][1], prefix):
            return _normal_format(name)
    return None


def _normal_format(name: str | None) -> str | None:
    return "JPEG" if name == "MPO" else name


def _try_open(data: bytes, allowed: Collection[str]) -> ImageFile.ImageFile | None:
    """Open ``data`` with the allowed plugins only, reading the header and nothing more.

    This is ``Image.open`` without its decompression-bomb check, which warns (or raises)
    against the process-wide ``Image.MAX_IMAGE_PIXELS``; we enforce our own per-processor
    limit right after, so neither that global nor the process's warning filters are touched.
    """
    Image.init()
    prefix = data[:_PREFIX_BYTES]
    failure: Exception | None = None
    for name in Image.ID:
        if name not in allowed:
            continue
        factory, accept = Image.OPEN[name]
        if not _accepts(accept, prefix):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Some plugins (GIF frames) run Pillow's check themselves while parsing; the
            # warning only arrives here as an exception when warnings are errors.
            raise PayloadTooLargeError(f"image pixel count is over the limit ({exc})") from exc
        except _HEADER_ERRORS as exc:
            failure = exc
    if failure is not None:
        # Pillow's parser messages ("unpack_from requires a buffer ...") mean nothing to a
        # caller; the original stays on __cause__ for logs.
        raise UndecodableInputError("image header is corrupt or truncated") from failure
    return None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UndecodableInputError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise _too_large(f"pixel count ({width}x{height})", width * height, max_pixels)


def _is_animated(image: Image.Image, fmt: str | None) -> bool:
    if fmt == "JPEG":  # MPO frames are stereo or depth views, not an animation
        return False
    try:
        return bool(getattr(image, "is_animated", False))
    except _HEADER_ERRORS as exc:
        raise UndecodableInputError(f"image frames are corrupt ({exc})") from exc


def open_image(
    data: bytes | Image.Image,
    *,
    allowed_formats: Collection[str],
    max_input_bytes: int,
    max_pixels: int,
) -> OpenedImage:
    """Open bytes (or take a PIL image), checking size, format and pixel count, not decoding.

    Raises:
        PayloadTooLargeError: Too many bytes or pixels.
        UnsupportedMediaError: A recognised image format that is not allowed.
        UndecodableInputError: Empty, not an image, a corrupt header, or zero size.
    """
    if isinstance(data, Image.Image):
        fmt = _normal_format(data.format)
        _check_size(data.width, data.height, max_pixels)
        return OpenedImage(data, fmt, None, _is_animated(data, fmt))
    if len(data) > max_input_bytes:
        raise _too_large("size in bytes", len(data), max_input_bytes)
    if not data:
        raise UndecodableInputError("image is empty (0 bytes)")
    image = _try_open(data, allowed_formats)
    if image is None:
        found = sniff_format(data)
        if found is not None:
            allowed = ", ".join(sorted(allowed_formats))
            raise UnsupportedMediaError(f"image format {found} is not allowed; allowed: {allowed}")
        raise UndecodableInputError("data is not a recognised image")
    fmt = _normal_format(image.format)
    _check_size(image.width, image.height, max_pixels)
    return OpenedImage(image, fmt, len(data), _is_animated(image, fmt))
