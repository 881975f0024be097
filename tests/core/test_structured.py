"""Structured data: StructuredValidator, validate_structured, prediction_to_structured."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from typing import Any

import dspy
import pytest
from pydantic import BaseModel, Field, RootModel

from llm_server.core.errors import DataValidationError, OutputParseError
from llm_server.core.implementations import StructuredValidator
from llm_server.core.media import validate_structured
from llm_server.core.media._structured import field_path, prediction_to_structured
from llm_server.core.pipeline import Pipeline
from llm_server.core.types import MediaType, PipelineData

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    sku: str
    price: float = Field(gt=0)


class Order(BaseModel):
    customer: str
    items: list[Item]
    note: str | None = None


GOOD = {"customer": "ada", "items": [{"sku": "a1", "price": 2.5}]}


@pytest.mark.parametrize(
    "content",
    [GOOD, json.dumps(GOOD), json.dumps(GOOD).encode(), Order.model_validate(GOOD)],
    ids=["dict", "json text", "json bytes", "model"],
)
async def test_valid_data_becomes_the_model(content: Any) -> None:
    result = await StructuredValidator(Order).process(
        PipelineData(MediaType.STRUCTURED, content, {"request_id": "r1"})
    )
    assert result.content == Order.model_validate(GOOD)
    assert result.media_type is MediaType.STRUCTURED
    assert result.metadata == {"request_id": "r1", "validated_as": "Order"}


async def test_as_dict_outputs_json_compatible_data() -> None:
    result = await StructuredValidator(Order, as_dict=True).process(
        PipelineData(MediaType.STRUCTURED, GOOD)
    )
    assert result.content == {**GOOD, "note": None}


async def test_text_holding_json_is_accepted() -> None:
    pipeline = Pipeline([StructuredValidator(Order)])
    result = await pipeline.execute(PipelineData(MediaType.TEXT, json.dumps(GOOD)))
    assert isinstance(result.content, Order)
    assert result.media_type is MediaType.STRUCTURED


async def test_failures_name_every_failing_field() -> None:
    bad = {"items": [{"sku": "a1", "price": 2}, {"sku": 5, "price": -1}]}
    with pytest.raises(DataValidationError) as caught:
        await StructuredValidator(Order).process(PipelineData(MediaType.STRUCTURED, bad))
    error = caught.value
    assert error.http_status == 422
    assert [e["field"] for e in error.errors] == ["customer", "items[1].sku", "items[1].price"]
    assert [e["type"] for e in error.errors] == ["missing", "string_type", "greater_than"]
    assert error.errors[1]["loc"] == ["items", 1, "sku"]
    for field in ("customer", "items[1].sku", "items[1].price"):
        assert field in error.message
    assert error.message.startswith("data does not match Order (3 errors)")


def test_rejected_values_are_not_echoed() -> None:
    with pytest.raises(DataValidationError) as caught:
        validate_structured(Item, {"sku": "4111-1111-1111-1111", "price": "card"})
    assert "4111" not in str(caught.value)
    assert "card" not in str(caught.value)
    assert all("input" not in e for e in caught.value.errors)


@pytest.mark.parametrize("text", ["{not json", "", b"\xff"])
def test_invalid_json_is_a_validation_error(text: str | bytes) -> None:
    with pytest.raises(DataValidationError) as caught:
        validate_structured(Order, text)
    assert caught.value.errors[0]["field"] == "(root)"
    assert caught.value.errors[0]["type"] == "json_invalid"


def test_top_level_lists_use_a_root_model() -> None:
    items = RootModel[list[Item]]
    assert validate_structured(items, [{"sku": "a", "price": 1}]).root[0].sku == "a"
    with pytest.raises(DataValidationError, match=r"\[0\]\.price"):
        validate_structured(items, [{"sku": "a", "price": 0}])


def test_another_model_is_validated_by_its_dump() -> None:
    class Loose(BaseModel):
        sku: str
        price: float

    assert validate_structured(Item, Loose(sku="x", price=1.0)) == Item(sku="x", price=1.0)
    with pytest.raises(DataValidationError, match="price"):
        validate_structured(Item, Loose(sku="x", price=-1.0))


def test_the_message_lists_at_most_twenty_errors() -> None:
    bad = [{"sku": i, "price": 1} for i in range(30)]
    with pytest.raises(DataValidationError) as caught:
        validate_structured(RootModel[list[Item]], bad)
    assert len(caught.value.errors) == 30
    assert caught.value.message.endswith("... and 10 more")


@pytest.mark.parametrize(
    ("loc", "path"),
    [((), "(root)"), (("a",), "a"), (("a", 0, "b"), "a[0].b"), ((2, "x"), "[2].x")],
)
def test_field_path(loc: tuple[int | str, ...], path: str) -> None:
    assert field_path(loc) == path


def test_the_validator_is_a_typed_step() -> None:
    step = StructuredValidator(Order)
    assert step.output_media_type is MediaType.STRUCTURED
    assert MediaType.STRUCTURED in step.accepted_media_types
    assert step.name == "validate_Order"
    assert repr(step) == "StructuredValidator(Order, as_dict=False)"


# --- prediction_to_structured --------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Extract(dspy.Signature):
    """Extract an order."""

    text: str = dspy.InputField()
    order: Order = dspy.OutputField()
    colours: list[Colour] = dspy.OutputField()
    when: dt.date = dspy.OutputField()
    where: Point = dspy.OutputField()
    count: int = dspy.OutputField()


def test_typed_outputs_become_json_compatible() -> None:
    prediction = dspy.Prediction(
        text="ignored input",
        reasoning="ignored extra",
        order=Order.model_validate(GOOD),
        colours=[Colour.RED],
        when=dt.date(2024, 5, 1),
        where=Point(1, 2),
        count=3,
    )
    result = prediction_to_structured(prediction, Extract)
    assert result == {
        "order": {**GOOD, "note": None},
        "colours": ["red"],
        "when": "2024-05-01",
        "where": {"x": 1, "y": 2},
        "count": 3,
    }
    assert list(result) == ["order", "colours", "when", "where", "count"]
    json.dumps(result)  # really JSON-compatible


def test_a_value_that_does_not_match_its_annotation_is_kept_without_warning() -> None:
    prediction = dspy.Prediction(
        order=GOOD, colours=["red"], when="soon", where={"x": 1}, count="3"
    )
    result = prediction_to_structured(prediction, Extract)
    assert result["when"] == "soon"
    assert result["count"] == "3"
    assert result["order"] == GOOD


def test_without_a_signature_every_field_is_taken() -> None:
    prediction = dspy.Prediction(answer="42", when=dt.datetime(2024, 1, 2, 3, 4, 5))
    assert prediction_to_structured(prediction) == {
        "answer": "42",
        "when": "2024-01-02T03:04:05",
    }


def test_unknown_values_fall_back_to_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    assert prediction_to_structured(dspy.Prediction(thing=Opaque())) == {"thing": "opaque"}


def test_a_missing_output_field_is_an_output_error() -> None:
    with pytest.raises(OutputParseError, match="'count'"):
        prediction_to_structured(
            dspy.Prediction(order=GOOD, colours=[], when="x", where=None), Extract
        )
