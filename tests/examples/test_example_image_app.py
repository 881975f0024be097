"""The image app: an uploaded JPEG reaches the vision model; hostile uploads get 4xx envelopes."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from _example_helpers import load_example, serving
from PIL import Image, ImageDraw

from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


def encoded(fmt: str, size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A generated picture in ``fmt`` (no binary fixtures)."""
    image = Image.new("RGB", size, (30, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo() -> bytes:
    """A 1600x1200 JPEG."""
    return encoded("JPEG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider(reply="a yellow circle on blue") as local:
        yield local


@pytest.fixture
def example(provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    provider.clear()
    return load_example("image_app", tmp_path, monkeypatch, provider.base_url)


async def test_an_uploaded_jpeg_is_described(example: ModuleType, provider: LocalProvider) -> None:
    upload = photo()
    async with serving(example.app) as client:
        response = await client.post(
            "/describe", files={"file": ("photo.jpg", upload, "image/jpeg")}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"]["description"] == "a yellow circle on blue"
    report = body["data"]["image"]
    assert report["original"] == {
        "format": "JPEG",
        "width": 1600,
        "height": 1200,
        "bytes": len(upload),
    }
    assert (report["final"]["width"], report["final"]["height"]) == (800, 600)
    assert report["resized"] is True
    assert body["metadata"]["program"]["id"] == "describe_image"
    assert body["metadata"]["performance"]["tokens"]["input"] > 0
    [sent] = provider.requests
    [part] = sent.images
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    received = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert received.format == "JPEG"
    assert max(received.size) <= 800, "the model gets the shrunk image"
    assert received.size == (800, 600)


@pytest.mark.parametrize(
    ("content", "status", "error_type"),
    [
        (photo()[:2000], 422, "undecodable_input"),
        (b"GIF89a" + b"\x00" * 10, 422, "undecodable_input"),
        (b"plain text", 422, "undecodable_input"),
        (encoded("BMP"), 415, "unsupported_media"),
        (encoded("TIFF"), 415, "unsupported_media"),
        (png_header_only(30_000, 30_000), 413, "payload_too_large"),
        (b"\xff" * (10 * 1024 * 1024 + 1), 413, "payload_too_large"),
    ],
    ids=["truncated-jpeg", "broken-gif", "text", "bmp", "tiff", "pixel-bomb", "too-many-bytes"],
)
async def test_hostile_uploads_get_4xx_envelopes(
    example: ModuleType, provider: LocalProvider, content: bytes, status: int, error_type: str
) -> None:
    async with serving(example.app) as client:
        response = await client.post("/describe", files={"file": ("x.jpg", content, "image/jpeg")})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["type"] == error_type
    assert body["execution_id"] == response.headers["x-execution-id"]
    assert provider.requests == [], "nothing reaches the model"


async def test_a_missing_upload_is_a_422_envelope(example: ModuleType) -> None:
    async with serving(example.app) as client:
        response = await client.post("/describe", data={"model_id": "gpt-4o-mini"})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert "file" in response.json()["error"]["message"]
