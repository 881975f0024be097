"""ImageProcessor: inputs, resizing, orientation, conversion, metadata."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from _image_factory import (
    DESCRIPTION,
    GPS_IFD,
    ORIENTATION,
    animated_gif,
    detailed,
    encode,
    halves,
    jpeg,
    jpeg_with_exif,
    png,
    psnr,
)
from PIL import Image, ImageCms

from llm_server.core.implementations import ImageProcessor
from llm_server.core.media import ProcessedImage
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

pytestmark = pytest.mark.anyio

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


async def run(processor: ImageProcessor, content: Any, **metadata: Any) -> PipelineData:
    return await processor.process(PipelineData(MediaType.IMAGE, content, metadata))


def decoded(result: PipelineData) -> Image.Image:
    assert isinstance(result.content, ProcessedImage)
    image = Image.open(io.BytesIO(result.content.data))
    image.load()
    return image


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


SOURCE = jpeg((120, 90))
B64 = base64.b64encode(SOURCE).decode()
INPUTS = {
    "bytes": SOURCE,
    "bytearray": bytearray(SOURCE),
    "memoryview": memoryview(SOURCE),
    "base64": B64,
    "base64 with line breaks": "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76)),
    "urlsafe base64 without padding": base64.urlsafe_b64encode(SOURCE).decode().rstrip("="),
    "data url": "data:image/jpeg;base64," + B64,
    "data url, upper-case scheme, spaces": "  DATA:image/jpeg;base64," + B64 + "\n",
    "data url without media type": "data:;base64," + B64,
    "PIL image": Image.open(io.BytesIO(SOURCE)),
    "processed image": ProcessedImage(SOURCE, "JPEG", 120, 90),
}


@pytest.mark.parametrize("content", list(INPUTS.values()), ids=list(INPUTS))
async def test_every_input_form_gives_the_same_image(content: Any) -> None:
    result = await run(ImageProcessor((60, 60)), content)
    image = decoded(result)
    assert (image.format, image.size) == ("JPEG", (60, 45))
    assert close(image.getpixel((30, 22)), (200, 30, 30))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((1600, 1200), (800, 800), (800, 600)),
        ((1200, 1600), (800, 800), (600, 800)),
        ((1000, 100), (800, 800), (800, 80)),
        ((300, 200), (800, 800), (300, 200)),  # never enlarged by default
        ((801, 801), (800, 600), (600, 600)),
    ],
)
async def test_fits_max_size_keeping_the_aspect_ratio(
    size: tuple[int, int], box: tuple[int, int], expected: tuple[int, int]
) -> None:
    result = await run(ImageProcessor(box), png(size))
    assert decoded(result).size == expected
    assert (result.content.width, result.content.height) == expected


async def test_upscale_enlarges_small_images_when_asked() -> None:
    result = await run(ImageProcessor((800, 800), upscale=True), png((300, 200)))
    assert decoded(result).size == (800, 533)


async def test_no_max_size_keeps_the_size() -> None:
    assert decoded(await run(ImageProcessor(None), png((1234, 567)))).size == (1234, 567)


@pytest.mark.parametrize(
    ("orientation", "size", "top", "bottom"),
    [
        (6, (120, 60), RED, BLUE),  # stored rotated 90 CCW: the left half is the top
        (8, (120, 60), BLUE, RED),  # stored rotated 90 CW: the right half is the top
        (3, (60, 120), None, None),  # upside down: size unchanged
    ],
)
async def test_exif_orientation_is_applied(
    orientation: int,
    size: tuple[int, int],
    top: tuple[int, int, int] | None,
    bottom: tuple[int, int, int] | None,
) -> None:
    source = jpeg_with_exif(halves(size, RED, BLUE), orientation=orientation)
    result = await run(ImageProcessor((800, 800)), source)
    image = decoded(result)
    assert image.size == ((size[1], size[0]) if orientation != 3 else size)
    if top is not None and bottom is not None:
        assert close(image.getpixel((30, 10)), top)  # type: ignore[arg-type]
        assert close(image.getpixel((30, image.height - 10)), bottom)  # type: ignore[arg-type]
    assert image.getexif().get(ORIENTATION) is None
    assert result.metadata["image"]["orientation"] == orientation


async def test_rotated_images_fit_max_size_after_rotation() -> None:
    source = jpeg_with_exif(halves((2000, 1000), RED, BLUE), orientation=6)
    image = decoded(await run(ImageProcessor((800, 800)), source))
    assert image.size == (400, 800)
    assert close(image.getpixel((200, 100)), RED)  # type: ignore[arg-type]


async def test_transparency_is_flattened_onto_the_background_for_jpeg() -> None:
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 128), (20, 0, 40, 40))
    result = await run(ImageProcessor(background=(0, 128, 255)), encode(rgba, "PNG"))
    image = decoded(result)
    assert image.mode == "RGB"
    assert close(image.getpixel((5, 20)), (0, 128, 255))  # type: ignore[arg-type]
    assert close(image.getpixel((35, 20)), (128, 64, 127))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["P", "LA", "PA"])
async def test_other_transparent_modes_are_flattened_too(mode: str) -> None:
    source = Image.new("RGBA", (20, 20), (0, 0, 0, 0)).convert(mode)
    if mode == "P":
        source.info["transparency"] = 0
    content = source if mode == "PA" else encode(source, "PNG")  # PNG cannot store PA
    image = decoded(await run(ImageProcessor(), content))
    assert close(image.convert("RGB").getpixel((10, 10)), WHITE)  # type: ignore[arg-type]


async def test_png_output_keeps_the_alpha_channel() -> None:
    rgba = Image.new("RGBA", (40, 40), (10, 20, 30, 77))
    image = decoded(await run(ImageProcessor(output_format="PNG"), encode(rgba, "PNG")))
    assert (image.format, image.mode, image.getpixel((1, 1))) == ("PNG", "RGBA", (10, 20, 30, 77))


@pytest.mark.parametrize(
    ("source", "allowed", "expected"),
    [
        (png(), {"PNG"}, "PNG"),
        (jpeg(), {"JPEG"}, "JPEG"),
        (encode(Image.new("RGB", (9, 9)), "WEBP"), {"WEBP"}, "WEBP"),
        (animated_gif([RED, BLUE]), {"GIF"}, "GIF"),
        (encode(Image.new("RGB", (9, 9)), "BMP"), {"BMP"}, "PNG"),  # we do not write BMP
    ],
)
async def test_output_format_none_keeps_the_input_format(
    source: bytes, allowed: set[str], expected: str
) -> None:
    result = await run(ImageProcessor(output_format=None, allowed_formats=allowed), source)
    assert decoded(result).format == expected == result.content.format
    assert result.content.mime_type == f"image/{expected.lower()}"


@pytest.mark.parametrize("fmt", ["JPEG", "jpg", "PNG", "WEBP", "webp"])
async def test_converts_to_the_requested_format(fmt: str) -> None:
    result = await run(ImageProcessor(output_format=fmt), png())
    expected = {"JPG": "JPEG"}.get(fmt.upper(), fmt.upper())
    assert decoded(result).format == expected == result.content.format


async def test_quality_changes_the_size() -> None:
    source = encode(detailed((400, 300)), "PNG")
    low = (await run(ImageProcessor(quality=20), source)).content
    high = (await run(ImageProcessor(quality=95), source)).content
    assert len(low.data) < len(high.data) / 2


async def test_optimize_makes_jpeg_no_larger() -> None:
    source = encode(detailed((400, 300)), "PNG")
    plain = (await run(ImageProcessor(), source)).content
    optimized = (await run(ImageProcessor(optimize=True), source)).content
    assert len(optimized.data) < len(plain.data)


async def test_metadata_is_stripped_by_default() -> None:
    source = jpeg_with_exif(Image.new("RGB", (50, 50), RED))
    assert Image.open(io.BytesIO(source)).getexif().get_ifd(GPS_IFD)  # the test can fail
    image = decoded(await run(ImageProcessor(), source))
    exif = image.getexif()
    assert not exif.get_ifd(GPS_IFD)
    assert DESCRIPTION not in exif
    assert "exif" not in image.info


async def test_stripping_can_be_turned_off_and_orientation_is_reset() -> None:
    source = jpeg_with_exif(halves((60, 30), RED, BLUE), orientation=6)
    image = decoded(await run(ImageProcessor(strip_metadata=False), source))
    exif = image.getexif()
    assert exif.get_ifd(GPS_IFD)[1] == "N"
    assert exif[DESCRIPTION] == "secret place"
    assert exif[ORIENTATION] == 1  # applied, so a viewer must not rotate it again
    assert image.size == (30, 60)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_icc_profiles_are_converted_to_srgb_and_dropped(fmt: str) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(Image.new("RGB", (30, 30), (10, 120, 240)), "PNG", icc_profile=icc)
    image = decoded(await run(ImageProcessor(output_format=fmt), source))
    assert "icc_profile" not in image.info
    assert close(image.getpixel((15, 15)), (10, 120, 240))  # type: ignore[arg-type]


async def test_png_text_chunks_are_stripped() -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "someone private")
    source = encode(Image.new("RGB", (20, 20)), "PNG", pnginfo=info)
    image = decoded(await run(ImageProcessor(output_format="PNG"), source))
    assert "Author" not in image.info


async def test_the_report_records_original_and_final_facts() -> None:
    source = png((1600, 1200))
    result = await run(ImageProcessor((800, 800)), source, request_id="r1")
    assert result.metadata["request_id"] == "r1"  # earlier metadata is kept
    assert result.metadata["image"] == {
        "original": {"format": "PNG", "width": 1600, "height": 1200, "bytes": len(source)},
        "final": {
            "format": "JPEG",
            "width": 800,
            "height": 600,
            "bytes": len(result.content.data),
        },
        "resized": True,
        "orientation": 1,
        "animated": False,
        "metadata_stripped": True,
    }


async def test_a_pil_input_is_not_modified() -> None:
    source = Image.new("RGB", (40, 40), RED)
    source.info["comment"] = b"keep me"
    await run(ImageProcessor((20, 20)), source)
    assert (source.size, source.info) == ((40, 40), {"comment": b"keep me"})
    assert (await run(ImageProcessor(), source)).metadata["image"]["original"]["bytes"] is None


@pytest.mark.parametrize("size", [(2000, 1500), (1500, 2000)])
@pytest.mark.parametrize(
    ("fmt", "params"), [("JPEG", {"quality": 92}), ("PNG", {"compress_level": 1})]
)
async def test_the_fast_path_matches_a_full_size_resize(
    size: tuple[int, int], fmt: str, params: dict[str, Any]
) -> None:
    source = encode(detailed(size), fmt, **params)
    fast = decoded(await run(ImageProcessor((800, 800), output_format="PNG"), source))
    full = decoded(
        await run(ImageProcessor((800, 800), output_format="PNG", reducing_gap=None), source)
    )
    assert fast.size == full.size
    assert psnr(fast, full) > 30


async def test_it_is_a_typed_pipeline_step() -> None:
    processor = ImageProcessor()
    pipeline = Pipeline([processor, ImageProcessor((10, 10), output_format="PNG")])
    result = await pipeline.execute(PipelineData(MediaType.IMAGE, png((100, 50))))
    assert (result.content.format, result.content.width, result.content.height) == ("PNG", 10, 5)
    assert processor.output_media_type is MediaType.IMAGE
    assert list(processor.accepted_media_types) == [MediaType.IMAGE]


def test_processed_image_value() -> None:
    image = ProcessedImage(b"\xff\xd8abc", "JPEG", 3, 4)
    assert image.to_base64() == base64.b64encode(b"\xff\xd8abc").decode()
    assert image.to_data_url() == "data:image/jpeg;base64," + image.to_base64()
    assert repr(image) == "ProcessedImage(format='JPEG', width=3, height=4, bytes=5)"
    with pytest.raises(AttributeError):
        image.width = 5  # type: ignore[misc]


async def test_an_unreadable_icc_profile_is_dropped() -> None:
    source = encode(Image.new("RGB", (30, 30), (10, 120, 240)), "PNG", icc_profile=b"garbage")
    image = decoded(await run(ImageProcessor(), source))
    assert "icc_profile" not in image.info


async def test_orientation_is_read_from_png_exif_too() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    source = encode(halves((120, 60), RED, BLUE), "PNG", exif=exif)
    image = decoded(await run(ImageProcessor(output_format="PNG"), source))
    assert image.size == (60, 120)
    assert image.getpixel((30, 10)) == RED


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"), RED),
        (encode(Image.new("L", (20, 20), 128), "JPEG"), (128, 128, 128)),
        (encode(Image.new("I;16", (20, 20), 65535), "PNG"), WHITE),
        (encode(Image.new("I;16", (20, 20), 32896), "PNG"), (128, 128, 128)),
        (encode(Image.new("1", (20, 20), 1), "PNG"), WHITE),
    ],
    ids=["CMYK JPEG", "grey JPEG", "16-bit PNG white", "16-bit PNG grey", "1-bit PNG"],
)
async def test_other_colour_modes_come_out_right(source: bytes, expected: tuple[int, ...]) -> None:
    image = decoded(await run(ImageProcessor(), source)).convert("RGB")
    assert close(image.getpixel((10, 10)), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"max_size": (0, 10)},
        {"output_format": "BMP"},
        {"quality": 0},
        {"max_pixels": 0},
        {"max_input_bytes": -1},
        {"reducing_gap": 0.5},
        {"animated": "loop"},
        {"background": (0, 0, 300)},
    ],
)
def test_invalid_options_are_configuration_errors(options: dict[str, Any]) -> None:
    from llm_server.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ImageProcessor"):
        ImageProcessor(**options)
