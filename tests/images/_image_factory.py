"""Images generated for the image tests (no binary fixtures)."""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from typing import Any

from PIL import Image, ImageDraw

GPS_IFD = 0x8825
ORIENTATION = 0x0112
DESCRIPTION = 0x010E


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...]) -> Image.Image:
    """An RGB image whose left half is ``left`` and right half ``right``."""
    image = Image.new("RGB", size, left)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=right)
    return image


def jpeg(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG", quality=90)


def png(size: tuple[int, int] = (64, 48), mode: str = "RGB", color: Any = (30, 200, 30)) -> bytes:
    return encode(Image.new(mode, size, color), "PNG")


def jpeg_with_exif(image: Image.Image, **tags: Any) -> bytes:
    """A JPEG carrying orientation, a description and a GPS block (``tags`` override)."""
    exif = Image.Exif()
    exif[DESCRIPTION] = tags.get("description", "secret place")
    exif[ORIENTATION] = tags.get("orientation", 1)
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 22.0, 7.0), 3: "E", 4: (4.0, 53.0, 32.0)})
    return encode(image, "JPEG", exif=exif, quality=95)


def detailed(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Gradients, shapes and noise: something a resize can get visibly wrong."""
    rnd = random.Random(seed)
    width, height = size
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_180), gradient))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y, r = rnd.randrange(width), rnd.randrange(height), rnd.randrange(5, width // 8)
        color = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        draw.ellipse((x, y, x + r, y + r), fill=color)
    return Image.blend(image, Image.effect_noise(size, 30).convert("RGB"), 0.1)


def animated_gif(colors: list[tuple[int, int, int]], size: tuple[int, int] = (32, 32)) -> bytes:
    frames = [Image.new("RGB", size, c) for c in colors]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(png((1, 1), "L", 0))
    ihdr_start = 8 + 8  # signature, then chunk length + type
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start - 4 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


def gif_with_screen_size(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen and frame claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("L", (1, 1), 0), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    image_descriptor = data.index(b",")
    data[image_descriptor + 5 : image_descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two same-size RGB images (pure Pillow)."""
    from PIL import ImageChops, ImageStat

    stat = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB")))
    mse = sum(stat.sum2) / (3 * a.width * a.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
