"""PipelineData and MediaType."""

from __future__ import annotations

import dataclasses

import pytest

from llm_server.core.types import MediaType, PipelineData


def test_media_types_cover_text_image_structured() -> None:
    assert {MediaType.TEXT, MediaType.IMAGE, MediaType.STRUCTURED} <= set(MediaType)
    assert MediaType("text") is MediaType.TEXT


def test_pipeline_data_is_immutable() -> None:
    data = PipelineData(media_type=MediaType.TEXT, content="hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.content = "changed"  # type: ignore[misc]


def test_metadata_defaults_to_a_fresh_mapping() -> None:
    first = PipelineData(media_type=MediaType.TEXT, content="a")
    second = PipelineData(media_type=MediaType.TEXT, content="b")
    assert first.metadata == {}
    assert first.metadata is not second.metadata


def test_evolve_merges_metadata_and_keeps_the_input_unchanged() -> None:
    data = PipelineData(media_type=MediaType.TEXT, content="abc", metadata={"a": 1, "b": 2})
    new = data.evolve(content="x", metadata={"b": 3, "c": 4})
    assert new.content == "x"
    assert new.media_type is MediaType.TEXT
    assert dict(new.metadata) == {"a": 1, "b": 3, "c": 4}
    assert dict(data.metadata) == {"a": 1, "b": 2}
    assert data.content == "abc"


def test_evolve_can_change_media_type_and_set_content_to_none() -> None:
    data = PipelineData(media_type=MediaType.TEXT, content="abc")
    new = data.evolve(content=None, media_type=MediaType.STRUCTURED)
    assert new.content is None
    assert new.media_type is MediaType.STRUCTURED
