"""ImageProcessor on bad and hostile input: our 4xx errors, never Pillow's."""

from __future__ import annotations

import base64
import contextlib
import io
import random
from typing import Any

import pytest
from _image_factory import (
    animated_gif,
    detailed,
    encode,
    gif_with_screen_size,
    jpeg,
    png,
    png_with_header_size,
)
from PIL import Image

from llm_server.core.errors import (
    InputError,
    LLMServerError,
    PayloadTooLargeError,
    UndecodableInputError,
    UnsupportedMediaError,
)
from llm_server.core.implementations import ImageProcessor
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

pytestmark = pytest.mark.anyio


async def run(processor: ImageProcessor, content: Any) -> PipelineData:
    return await processor.process(PipelineData(MediaType.IMAGE, content))


SMALL_JPEG = jpeg((40, 30))
TRUNCATED_JPEG = encode(detailed((300, 200)), "JPEG")[:2000]
TRUNCATED_PNG = encode(detailed((300, 200)), "PNG")[:3000]

CASES = [
    pytest.param(
        ImageProcessor(max_input_bytes=100),
        SMALL_JPEG,
        PayloadTooLargeError,
        413,
        "over the limit",
        id="bytes over the limit",
    ),
    # invalid base64 that is too long: the size is refused before anything is decoded
    pytest.param(
        ImageProcessor(max_input_bytes=1000),
        "!" * 2000,
        PayloadTooLargeError,
        413,
        "over the limit",
        id="base64 over the limit",
    ),
    pytest.param(
        ImageProcessor(max_input_bytes=100),
        "data:image/jpeg;base64," + base64.b64encode(SMALL_JPEG).decode(),
        PayloadTooLargeError,
        413,
        "over the limit",
        id="data url over the limit",
    ),
    pytest.param(
        ImageProcessor(max_pixels=1000),
        png((40, 30)),
        PayloadTooLargeError,
        413,
        "pixel count",
        id="pixels over the limit",
    ),
    pytest.param(
        ImageProcessor(),
        png_with_header_size(100_000, 100_000),
        PayloadTooLargeError,
        413,
        "pixel count",
        id="PNG bomb header 100k x 100k",
    ),
    # between Pillow's own warning and error thresholds: must not warn (warnings are errors here)
    pytest.param(
        ImageProcessor(),
        png_with_header_size(10_000, 10_000),
        PayloadTooLargeError,
        413,
        "pixel count",
        id="PNG bomb header 10k x 10k",
    ),
    pytest.param(
        ImageProcessor(),
        gif_with_screen_size(65_000, 65_000),
        PayloadTooLargeError,
        413,
        "pixel count",
        id="GIF bomb header",
    ),
    pytest.param(ImageProcessor(), b"", UndecodableInputError, 422, "empty", id="empty bytes"),
    pytest.param(ImageProcessor(), "", UndecodableInputError, 422, "empty", id="empty string"),
    pytest.param(
        ImageProcessor(),
        random.Random(1).randbytes(5000),
        UndecodableInputError,
        422,
        "not a recognised image",
        id="random bytes",
    ),
    pytest.param(
        ImageProcessor(),
        b"hello, I am not an image at all",
        UndecodableInputError,
        422,
        "not a recognised image",
        id="text",
    ),
    pytest.param(
        ImageProcessor(),
        TRUNCATED_JPEG,
        UndecodableInputError,
        422,
        "truncated",
        id="truncated JPEG",
    ),
    pytest.param(
        ImageProcessor(), TRUNCATED_PNG, UndecodableInputError, 422, "truncated", id="truncated PNG"
    ),
    pytest.param(
        ImageProcessor(),
        SMALL_JPEG[:20],
        UndecodableInputError,
        422,
        "corrupt or truncated",
        id="JPEG header only",
    ),
    pytest.param(
        ImageProcessor(),
        png_with_header_size(0, 10),
        UndecodableInputError,
        422,
        "image",
        id="zero-size PNG",
    ),
    pytest.param(
        ImageProcessor(),
        "not*base64*at*all",
        UndecodableInputError,
        422,
        "base64",
        id="invalid base64",
    ),
    pytest.param(
        ImageProcessor(),
        "data:image/png;base64",
        UndecodableInputError,
        422,
        "data URL",
        id="data url without comma",
    ),
    pytest.param(
        ImageProcessor(),
        "data:text/plain;base64,aGVsbG8=",
        UnsupportedMediaError,
        415,
        "text/plain",
        id="data url of another type",
    ),
    pytest.param(
        ImageProcessor(),
        "https://169.254.169.254/latest/meta-data",
        UnsupportedMediaError,
        415,
        "not fetched",
        id="remote URL",
    ),
    pytest.param(
        ImageProcessor(),
        encode(Image.new("RGB", (8, 8)), "BMP"),
        UnsupportedMediaError,
        415,
        "BMP is not allowed",
        id="BMP not allowed",
    ),
    pytest.param(
        ImageProcessor(),
        encode(Image.new("RGB", (8, 8)), "TIFF"),
        UnsupportedMediaError,
        415,
        "TIFF",
        id="TIFF not allowed",
    ),
    pytest.param(
        ImageProcessor(allowed_formats={"PNG"}),
        SMALL_JPEG,
        UnsupportedMediaError,
        415,
        "JPEG is not allowed",
        id="JPEG when only PNG allowed",
    ),
    pytest.param(
        ImageProcessor(animated="refuse"),
        animated_gif([(255, 0, 0), (0, 0, 255)]),
        UnsupportedMediaError,
        415,
        "animated",
        id="animated GIF refused",
    ),
    pytest.param(
        ImageProcessor(), 12345, UnsupportedMediaError, 415, "int", id="not image content"
    ),
]


@pytest.mark.parametrize(("processor", "content", "error", "status", "words"), CASES)
async def test_bad_input_raises_our_error_with_its_status(
    processor: ImageProcessor, content: Any, error: type[InputError], status: int, words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        await run(processor, content)
    assert caught.value.http_status == status  # what the FastAPI handler answers
    cause = caught.value.__cause__
    assert cause is None or not isinstance(cause, LLMServerError)


async def test_errors_pass_through_a_pipeline_unchanged() -> None:
    pipeline = Pipeline([ImageProcessor()])
    with pytest.raises(UndecodableInputError):
        await pipeline.execute(PipelineData(MediaType.IMAGE, TRUNCATED_JPEG))


async def test_pillow_global_limit_is_left_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(PayloadTooLargeError):
        await run(ImageProcessor(), png_with_header_size(30_000, 30_000))
    assert before == Image.MAX_IMAGE_PIXELS


async def test_a_higher_pixel_limit_accepts_large_images() -> None:
    result = await run(ImageProcessor((10, 10), max_pixels=10**9), png((3000, 2000), "L", 0))
    assert result.metadata["image"]["original"]["width"] == 3000


async def test_animated_images_use_the_first_frame_by_default() -> None:
    result = await run(ImageProcessor(), animated_gif([(255, 0, 0), (0, 0, 255), (0, 255, 0)]))
    image = Image.open(io.BytesIO(result.content.data)).convert("RGB")
    assert image.getpixel((5, 5)) == pytest.approx((255, 0, 0), abs=40)
    assert result.metadata["image"]["animated"] is True


async def test_a_single_frame_gif_is_not_animated() -> None:
    result = await run(ImageProcessor(animated="refuse"), animated_gif([(255, 0, 0)]))
    assert result.metadata["image"]["animated"] is False


def _mutants(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    sources = [
        encode(detailed((64, 48)), "JPEG"),
        encode(detailed((64, 48)), "PNG"),
        encode(detailed((64, 48)), "WEBP"),
        animated_gif([(1, 2, 3), (200, 100, 50)]),
    ]
    out = []
    for source in sources:
        data = bytearray(source)
        for _ in range(rnd.randrange(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            data = data[: rnd.randrange(len(data))]
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("seed", range(40))
async def test_corrupted_files_never_leak_a_pillow_error(seed: int) -> None:
    for mutant in _mutants(seed):
        with contextlib.suppress(InputError):  # any other exception fails the test
            await run(ImageProcessor(), mutant)
