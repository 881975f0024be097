"""Answers real models give: each kind has its own error, and every billed token is reported.

Over real HTTP, the local provider answers with no field markers, a missing field, a bad
float, a cut answer, empty content or a refusal, billing each. Tokens the provider billed
must equal the tokens in the request's metrics (the envelope's source), in the token and cost
metrics and in the tenant's budget, on both engines and with both adapters.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from _otel_helpers import metric_points
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_server.core.budgets import Budget, tenant_scope
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    EmptyOutputError,
    ModelRefusedError,
    OutputParseError,
    OutputTruncatedError,
    StreamInterruptedError,
)
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.model_config import ParsePolicy
from llm_server.core.opentelemetry_integration import Telemetry
from llm_server.core.streaming import stream_events
from llm_server.defaults import FileSystemStorageAdapter
from llm_server.models.manager import ModelManager
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider, RawReply, StaticConfigProvider

pytestmark = pytest.mark.anyio

PROGRAM = "question -> answer: str, confidence: float"
SECRET_ANSWER = "the-raw-answer-text-7f3a"

# kind -> (reply for ChatAdapter, reply for JSONAdapter, error class, error type)
KINDS: dict[str, tuple[RawReply, RawReply, type[OutputParseError], str]] = {
    "no_markers": (
        RawReply(f"no field markers at all {SECRET_ANSWER}"),
        RawReply(f"no JSON at all {SECRET_ANSWER}"),
        OutputParseError,
        "unparseable_output",
    ),
    "missing_field": (
        RawReply(f"[[ ## answer ## ]]\n{SECRET_ANSWER}\n\n[[ ## completed ## ]]"),
        RawReply(f'{{"answer": "{SECRET_ANSWER}"}}'),
        OutputParseError,
        "unparseable_output",
    ),
    "bad_float": (
        RawReply(
            f"[[ ## answer ## ]]\n{SECRET_ANSWER}\n\n[[ ## confidence ## ]]\nseven\n\n"
            "[[ ## completed ## ]]"
        ),
        RawReply(f'{{"answer": "{SECRET_ANSWER}", "confidence": "seven"}}'),
        OutputParseError,
        "unparseable_output",
    ),
    "truncated": (
        RawReply(f"[[ ## answer ## ]]\n{SECRET_ANSWER} and then", finish_reason="length"),
        RawReply(f'{{"answer": "{SECRET_ANSWER} and then', finish_reason="length"),
        OutputTruncatedError,
        "output_truncated",
    ),
    "empty": (RawReply(""), RawReply(""), EmptyOutputError, "empty_output"),
    "refused": (
        RawReply(None, refusal="I can't help with that."),
        RawReply(None, refusal="I can't help with that."),
        ModelRefusedError,
        "model_refused",
    ),
}
ENGINES = ("auto", "litellm")
ADAPTERS = ("chat", "json")


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
async def make_manager(
    provider: LocalProvider, make_telemetry: Callable[..., Telemetry]
) -> AsyncIterator[Callable[..., ModelManager]]:
    provider.clear_faults()
    provider.clear()
    provider.script(reply=None)
    built: list[ModelManager] = []

    def make(engine: str, adapter: str | None, **extra: Any) -> ModelManager:
        models = {
            "m": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                "engine": engine,
                **({"adapter": adapter} if adapter else {}),
                "max_tokens": 256,
                "retry": {"max_attempts": 1},
                **extra,
            }
        }
        manager = ModelManager(
            config_provider=StaticConfigProvider(models),
            settings=FrameworkSettings(request_deadline_s=10.0),
            environ={},
            telemetry=make_telemetry(),
        )
        manager.budgets.set_budget("acme", "day", Budget(tokens=10**9))
        built.append(manager)
        return manager

    yield make
    for manager in built:
        await manager.aclose()


def reported_tokens(reader: InMemoryMetricReader) -> tuple[int, int]:
    points = metric_points(reader).get("gen_ai.client.token.usage", [])
    by_type = {"input": 0, "output": 0}
    for point in points:
        by_type[point.attributes["gen_ai.token.type"]] += int(point.sum)
    return by_type["input"], by_type["output"]


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize(
    "case", [(k, e, a) for k in KINDS for e in ENGINES for a in ADAPTERS], ids=str
)
async def test_each_kind_has_its_type_and_every_billed_token_is_reported(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    reader: InMemoryMetricReader,
    case: tuple[str, str, str],
) -> None:
    kind, engine, adapter = case
    chat_reply, json_reply, error_class, error_type = KINDS[kind]
    provider.script(reply=chat_reply if adapter == "chat" else json_reply)
    manager = make_manager(engine, adapter)
    backend = manager.reliable_backend(dspy.Predict(PROGRAM), "m")
    metrics = PerformanceMetrics()

    with tenant_scope("acme"), pytest.raises(OutputParseError) as caught:
        await backend.predict({"question": "q"})

    error = caught.value
    assert type(error) is error_class
    assert error.error_type == error_type
    assert SECRET_ANSWER not in error.message  # no raw answer without the content opt-in
    billed_in, billed_out = provider.billed_tokens
    assert billed_in > 0
    # the request's metrics (the envelope's usage)
    block = metrics.billed_usage()
    assert block is not None
    assert (block["input"], block["output"]) == (billed_in, billed_out)
    assert block["method"] == "dspy_history_exact"
    assert [call["outcome"] for call in block["calls"]] == [error_type]
    assert block["cost_usd"] > 0
    # the token and cost metrics
    assert reported_tokens(reader) == (billed_in, billed_out)
    (cost,) = metric_points(reader)["llm_server.client.cost_usd"]
    assert cost.value == pytest.approx(block["cost_usd"])
    (failure,) = metric_points(reader)["llm_server.client.parse_failures"]
    assert failure.attributes["llm_server.answer.kind"] == error_type
    assert failure.attributes["llm_server.model_id"] == "m"
    assert failure.value == 1
    # the tenant's budget
    (used, _budget) = (await manager.budgets.usage("acme"))["day"]
    assert (used.requests, used.tokens) == (1, billed_in + billed_out)
    assert used.cost_usd == pytest.approx(block["cost_usd"])


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
async def test_the_kinds_say_what_a_user_needs(
    make_manager: Callable[..., ModelManager], provider: LocalProvider, engine: str
) -> None:
    backend = make_manager(engine, "chat").single_attempt_backend(dspy.Predict(PROGRAM), "m")

    provider.script(reply=KINDS["missing_field"][0])
    with pytest.raises(OutputParseError) as missing:
        await backend.predict({"question": "q"})
    provider.script(reply=KINDS["bad_float"][0])
    with pytest.raises(OutputParseError) as invalid:
        await backend.predict({"question": "q"})
    provider.script(reply=KINDS["truncated"][0])
    with pytest.raises(OutputTruncatedError) as truncated:
        await backend.predict({"question": "q"})
    provider.script(reply=KINDS["refused"][0])
    with pytest.raises(ModelRefusedError) as refused:
        await backend.predict({"question": "q"})

    assert missing.value.fields == ("confidence",)
    assert "were missing: confidence" in missing.value.message
    assert invalid.value.fields == ("confidence",)
    assert "could not be read: confidence" in invalid.value.message
    assert truncated.value.max_tokens == 256
    assert "max_tokens=256" in truncated.value.message
    assert refused.value.refusal == "I can't help with that."
    assert refused.value.http_status == 422
    assert "I can't help with that." in refused.value.message


async def test_the_raw_answer_is_quoted_only_with_content_capture(
    provider: LocalProvider, make_telemetry: Callable[..., Telemetry]
) -> None:
    provider.script(reply=KINDS["no_markers"][0])
    models = {
        "m": {"model_name": "openai/gpt-4o-mini", "api_base": provider.openai_api_base},
    }
    manager = ModelManager(
        config_provider=StaticConfigProvider(models),
        settings=FrameworkSettings(otel_capture_message_content=True),
        environ={"OPENAI_API_KEY": "sk-test"},
        telemetry=make_telemetry(otel_capture_message_content=True),
    )
    try:
        with pytest.raises(OutputParseError, match=SECRET_ANSWER):
            await manager.single_attempt_backend(dspy.Predict(PROGRAM), "m").predict(
                {"question": "q"}
            )
    finally:
        await manager.aclose()


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
async def test_dspy_json_fallback_bills_both_calls_and_both_are_reported(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    reader: InMemoryMetricReader,
    engine: str,
) -> None:
    # The host configured DSPy's own ChatAdapter, whose JSON fallback is on: two billed calls.
    provider.script(reply=KINDS["no_markers"][0])
    manager = make_manager(engine, None)
    backend = manager.reliable_backend(dspy.Predict(PROGRAM), "m")
    metrics = PerformanceMetrics()

    fallback_on = dspy.ChatAdapter(use_json_adapter_fallback=True)
    with dspy.context(adapter=fallback_on), tenant_scope("acme"), pytest.raises(OutputParseError):
        await backend.predict({"question": "q"})

    assert len(provider.requests) == 2
    billed_in, billed_out = provider.billed_tokens
    block = metrics.billed_usage()
    assert block is not None
    assert (block["input"], block["output"]) == (billed_in, billed_out)
    assert block["calls"][0]["lm_calls"] == 2
    assert reported_tokens(reader) == (billed_in, billed_out)
    (used, _budget) = (await manager.budgets.usage("acme"))["day"]
    assert used.tokens == billed_in + billed_out


async def test_dspy_truncation_warning_is_a_log_record_of_the_request(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider.script(reply=KINDS["truncated"][0])
    backend = make_manager("auto", "chat").single_attempt_backend(dspy.Predict(PROGRAM), "m")

    with caplog.at_level(logging.WARNING), pytest.raises(OutputTruncatedError):
        await backend.predict({"question": "q"})

    records = [r for r in caplog.records if getattr(r, "dspy_warning", None)]
    assert len(records) == 1
    assert records[0].name == "llm_server.models.dspy_backend"
    assert "truncated" in records[0].getMessage()
    assert not [r for r in caplog.records if r.name == "dspy.clients.lm"]
    assert "LM response was truncated" not in capsys.readouterr().err


class Judge(dspy.Signature):
    """Judge the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    confidence: float = dspy.OutputField()


async def test_a_programs_registered_policy_wins_and_failures_are_counted_by_version(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    reader: InMemoryMetricReader,
    tmp_path: Path,
) -> None:
    replies = iter([KINDS["bad_float"][0]])
    provider.script(reply=lambda request: next(replies, {"answer": "ok", "confidence": 1.0}))
    manager = make_manager("auto", None)  # the model's policy: none
    programs = ProgramManager(
        model_manager=manager, storage_adapter=FileSystemStorageAdapter(tmp_path / "p")
    )
    metadata = programs.register_program(Judge, parse_policy=ParsePolicy(reasks=1))
    metrics = PerformanceMetrics()

    output = await programs.reliable_backend("judge", "m").predict({"question": "q"})

    assert output.content.confidence == 1.0
    assert len(provider.requests) == 2
    assert metrics.answer_attempts() == {"unparseable_output": 1, "ok": 1}
    (failure,) = metric_points(reader)["llm_server.client.parse_failures"]
    assert failure.attributes["llm_server.program_id"] == "judge"
    assert failure.attributes["llm_server.program_version"] == metadata.version
    assert failure.attributes["llm_server.answer.kind"] == "unparseable_output"
    assert reported_tokens(reader) == provider.billed_tokens


class TwoSteps(dspy.Module):
    """Two calls per run: a failure of the second after the first answered."""

    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> answer")
        self.second = dspy.Predict("answer -> verdict")

    async def aforward(self, question: str) -> dspy.Prediction:
        answer = (await self.first.acall(question=question)).answer
        return await self.second.acall(answer=answer)


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_retried_attempt_that_had_billed_calls_is_reported_and_charged(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    reader: InMemoryMetricReader,
    engine: str,
) -> None:
    provider.add_fault("server_error", nth=2)  # the first attempt's second call
    manager = make_manager(engine, None, retry={"max_attempts": 2, "initial_backoff_s": 0})
    metrics = PerformanceMetrics()

    with tenant_scope("acme"):
        await manager.reliable_backend(TwoSteps(), "m").predict({"question": "q"})

    assert len(provider.billed) == 3  # 1 call of the failed attempt, 2 of the retry
    billed_in, billed_out = provider.billed_tokens
    usage = metrics.usage()
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (billed_in, billed_out)
    assert reported_tokens(reader) == (billed_in, billed_out)
    (used, _budget) = (await manager.budgets.usage("acme"))["day"]
    assert (used.requests, used.tokens) == (1, billed_in + billed_out)


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize(
    "case",
    [
        (k, e, a)
        for k in ("no_markers", "missing_field", "bad_float")
        for e in ENGINES
        for a in ADAPTERS
    ],
    ids=str,
)
async def test_without_content_capture_the_raw_answer_is_in_no_span_log_or_traceback(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    case: tuple[str, str, str],
) -> None:
    kind, engine, adapter = case
    chat_reply, json_reply, _error_class, _error_type = KINDS[kind]
    provider.script(reply=chat_reply if adapter == "chat" else json_reply)
    backend = make_manager(engine, adapter).reliable_backend(dspy.Predict(PROGRAM), "m")

    with caplog.at_level(logging.DEBUG), pytest.raises(OutputParseError) as caught:
        await backend.predict({"question": "q"})

    # the error's whole chain, as an error tracker or a log's exc_info would print it
    printed = "".join(traceback.format_exception(caught.value))
    assert SECRET_ANSWER not in printed
    assert "AdapterParseError" in printed  # the cause is still named
    # (LiteLLM's own DEBUG lines print every response, parsed or not: not ours to govern)
    ours = [r for r in caplog.records if r.name.startswith(("llm_server", "dspy"))]
    logged = "\n".join(record.getMessage() for record in ours)
    assert SECRET_ANSWER not in logged
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        seen = [str(span.status.description), *map(str, (span.attributes or {}).values())]
        for event in span.events:
            seen.extend(map(str, (event.attributes or {}).values()))
        assert not [text for text in seen if SECRET_ANSWER in text], span.name


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_stream_broken_by_a_cut_answer_quotes_it_nowhere_without_content_capture(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    exporter: InMemorySpanExporter,
    engine: str,
) -> None:
    provider.script(reply=KINDS["truncated"][0])  # its first piece is out before the cut
    backend = make_manager(engine, "chat").reliable_backend(dspy.Predict(PROGRAM), "m")

    with pytest.raises(StreamInterruptedError) as caught:
        [_ async for _ in stream_events(lambda: backend.predict({"question": "q"}))]

    assert SECRET_ANSWER not in "".join(traceback.format_exception(caught.value))
    for span in exporter.get_finished_spans():
        for event in span.events:
            assert SECRET_ANSWER not in str(dict(event.attributes or {})), span.name


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_streamed_refusal_is_a_refusal_with_every_billed_token_reported(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    reader: InMemoryMetricReader,
    engine: str,
) -> None:
    # OpenAI streams a refusal as delta.refusal chunks; neither engine's stream parser keeps them.
    provider.script(reply=KINDS["refused"][0])
    manager = make_manager(engine, "chat")
    backend = manager.reliable_backend(dspy.Predict(PROGRAM), "m")
    metrics = PerformanceMetrics()

    with tenant_scope("acme"), pytest.raises(ModelRefusedError) as caught:
        [_ async for _ in stream_events(lambda: backend.predict({"question": "q"}))]

    assert caught.value.refusal == "I can't help with that."  # was EmptyOutputError
    assert provider.requests[-1].stream
    billed_in, billed_out = provider.billed_tokens
    assert billed_out > 0
    block = metrics.billed_usage()
    assert block is not None
    assert (block["input"], block["output"]) == (billed_in, billed_out)  # LiteLLM: output was 0
    assert reported_tokens(reader) == (billed_in, billed_out)
    (failure,) = metric_points(reader)["llm_server.client.parse_failures"]
    assert failure.attributes["llm_server.answer.kind"] == "model_refused"
    (used, _budget) = (await manager.budgets.usage("acme"))["day"]
    assert (used.requests, used.tokens) == (1, billed_in + billed_out)


@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_cut_answer_that_parses_is_truncated_with_every_billed_token_reported(
    make_manager: Callable[..., ModelManager],
    provider: LocalProvider,
    reader: InMemoryMetricReader,
    engine: str,
) -> None:
    # Every field written, the last one cut: DSPy parses it, the answer is still incomplete.
    cut = "[[ ## answer ## ]]\nParis\n\n[[ ## confidence ## ]]\n0.5"
    provider.script(reply=RawReply(cut, finish_reason="length"))
    manager = make_manager(engine, "chat")
    backend = manager.reliable_backend(dspy.Predict(PROGRAM), "m")
    metrics = PerformanceMetrics()

    with tenant_scope("acme"), pytest.raises(OutputTruncatedError) as caught:
        await backend.predict({"question": "q"})

    assert caught.value.max_tokens == 256
    assert "it parsed, but its last output field is incomplete" in caught.value.message
    billed_in, billed_out = provider.billed_tokens
    block = metrics.billed_usage()
    assert block is not None
    assert (block["input"], block["output"]) == (billed_in, billed_out)
    assert [call["outcome"] for call in block["calls"]] == ["output_truncated"]
    assert reported_tokens(reader) == (billed_in, billed_out)
    (failure,) = metric_points(reader)["llm_server.client.parse_failures"]
    assert failure.attributes["llm_server.answer.kind"] == "output_truncated"
    (used, _budget) = (await manager.budgets.usage("acme"))["day"]
    assert (used.requests, used.tokens) == (1, billed_in + billed_out)
