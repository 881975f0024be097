"""to_dspy_image: the processed bytes reach a vision model exactly, in both wire formats."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from _image_factory import encode, jpeg, png
from PIL import Image

from llm_server.core.errors import UndecodableInputError, UnsupportedMediaError
from llm_server.core.implementations import ImageProcessor
from llm_server.core.media import ProcessedImage, to_dspy_image
from llm_server.core.types import MediaType, PipelineData
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


class Describe(dspy.Signature):
    """Describe the image."""

    image: dspy.Image = dspy.InputField()
    answer: str = dspy.OutputField()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_processed_image_becomes_its_data_url() -> None:
    image = ProcessedImage(jpeg(), "JPEG", 64, 48)
    assert to_dspy_image(image).url == image.to_data_url()
    data = PipelineData(MediaType.IMAGE, image)
    assert to_dspy_image(data).url == image.to_data_url()


@pytest.mark.parametrize(
    ("content", "mime"),
    [
        (jpeg(), "image/jpeg"),
        (png(), "image/png"),
        (encode(Image.new("RGB", (4, 4)), "WEBP"), "image/webp"),
    ],
)
def test_bytes_are_sent_as_they_are(content: bytes, mime: str) -> None:
    # dspy.Image(bytes) would decode and re-encode them; we keep the exact bytes
    assert to_dspy_image(content).url == f"data:{mime};base64,{b64(content)}"
    assert to_dspy_image(b64(content)).url == f"data:{mime};base64,{b64(content)}"


def test_data_urls_and_dspy_images_pass_through() -> None:
    url = f"data:image/png;base64,{b64(png())}"
    assert to_dspy_image(url).url == url
    image = dspy.Image(url)
    assert to_dspy_image(image) is image


def test_pil_images_are_encoded_by_dspy() -> None:
    assert to_dspy_image(Image.new("RGB", (3, 3))).url.startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"plain text, not an image", UnsupportedMediaError),
        ("@@not base64@@", UndecodableInputError),
        (3.5, UnsupportedMediaError),
    ],
)
def test_non_images_are_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        to_dspy_image(value)


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider(reply="a red square") as running:
        yield running


@pytest.mark.parametrize(
    ("model", "engine", "part_type"),
    [
        ("openai/gpt-4o-mini", "auto", "image_url"),
        ("anthropic/claude-3-5-haiku-latest", "auto", "image"),
        ("openai/gpt-4o-mini", "litellm", "image_url"),
        ("anthropic/claude-3-5-haiku-latest", "litellm", "image"),
    ],
)
async def test_the_processed_image_arrives_at_the_provider(
    provider: LocalProvider,
    closing_lms: Callable[[Any], Any],
    model: str,
    engine: str,
    part_type: str,
) -> None:
    source = encode(Image.new("RGB", (1600, 1200), (200, 10, 10)), "PNG")
    processed = await ImageProcessor((800, 800)).process(PipelineData(MediaType.IMAGE, source))
    image: ProcessedImage = processed.content
    api_base = provider.base_url if engine == "litellm" and "anthropic" in model else None
    lm = closing_lms(
        dspy.LM(
            model,
            api_base=api_base or provider.openai_api_base,
            api_key="test-key",
            cache=False,
            num_retries=0,
            engine=engine,
        )
    )
    provider.clear()
    with dspy.context(lm=lm):
        prediction = await dspy.Predict(Describe).acall(image=to_dspy_image(processed))
    assert prediction.answer == "a red square"
    [request] = provider.requests
    [part] = request.images
    assert part["type"] == part_type
    if part_type == "image_url":
        assert part["image_url"]["url"] == image.to_data_url()
    else:
        assert part["source"] == {
            "type": "base64",
            "media_type": "image/jpeg",
            "data": b64(image.data),
        }
    assert Image.open(io.BytesIO(image.data)).size == (800, 600)
