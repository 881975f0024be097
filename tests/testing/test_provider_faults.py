"""LocalProvider faults and latency, observed by a plain httpx client over a real socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_server.core.errors import ConfigurationError
from llm_server.testing import FaultRule, LocalProvider

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as running:
        yield running


def post(
    provider: LocalProvider, path: str = OPENAI, *, model: str = "gpt-4o-mini", **kw: Any
) -> httpx.Response:
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(provider.base_url + path, json=body, timeout=kw.pop("timeout", 5), **kw)


@pytest.mark.parametrize(
    ("fault", "status", "openai_type", "anthropic_type"),
    [
        ("rate_limit", 429, "rate_limit_error", "rate_limit_error"),
        ("server_error", 500, "server_error", "api_error"),
        ("unavailable", 503, "server_error", "overloaded_error"),
        ("auth", 401, "invalid_request_error", "authentication_error"),
        ("bad_request", 400, "invalid_request_error", "invalid_request_error"),
        (502, 502, "api_error", "api_error"),
    ],
)
def test_status_faults_look_like_the_real_providers(
    provider: LocalProvider, fault: Any, status: int, openai_type: str, anthropic_type: str
) -> None:
    provider.add_fault(fault)
    openai = post(provider, OPENAI)
    anthropic = post(provider, ANTHROPIC)
    assert (openai.status_code, anthropic.status_code) == (status, status)
    assert openai.json()["error"]["type"] == openai_type
    assert anthropic.json() == {"type": "error", "error": anthropic.json()["error"]}
    assert anthropic.json()["error"]["type"] == anthropic_type


def test_rate_limit_sends_retry_after(provider: LocalProvider) -> None:
    provider.add_fault("rate_limit")
    assert post(provider).headers["retry-after"] == "1"  # the default
    provider.clear_faults()
    provider.add_fault("rate_limit", retry_after_s=2.5)
    response = post(provider)
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("3", "2500")
    provider.clear_faults()
    provider.add_fault("unavailable", retry_after_s=7)
    assert post(provider).headers["retry-after"] == "7"


def test_context_window_bodies(provider: LocalProvider) -> None:
    provider.add_fault("context_window")
    openai = post(provider, OPENAI).json()["error"]
    assert openai["code"] == "context_length_exceeded"
    assert "maximum context length" in openai["message"]
    anthropic = post(provider, ANTHROPIC, model="claude-3-5-haiku").json()["error"]
    assert anthropic["type"] == "invalid_request_error"
    assert anthropic["message"].startswith("prompt is too long:")


def test_custom_message(provider: LocalProvider) -> None:
    provider.add_fault("server_error", message="disk on fire")
    assert post(provider).json()["error"]["message"] == "disk on fire"


def test_malformed_json_body(provider: LocalProvider) -> None:
    provider.add_fault("malformed_json")
    response = post(provider)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_connection_reset(provider: LocalProvider) -> None:
    provider.add_fault("connection_reset")
    with pytest.raises(httpx.ReadError, match="reset by peer"):  # RST, not a clean close
        post(provider)


def test_hang_times_out_at_the_client(provider: LocalProvider) -> None:
    provider.add_fault("hang")
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        post(provider, timeout=0.1)
    assert time.perf_counter() - started < 1.0
    provider.clear_faults()
    assert post(provider).status_code == 200  # the server is not stuck


def test_stop_does_not_wait_for_hanging_requests() -> None:
    provider = LocalProvider().start()
    provider.add_fault("hang")
    outcome: list[BaseException | httpx.Response] = []

    def call() -> None:
        try:
            outcome.append(post(provider, timeout=30))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    while len(provider.requests) < 3:
        time.sleep(0.002)
    started = time.perf_counter()
    provider.stop()
    for thread in threads:
        thread.join(5)
    assert time.perf_counter() - started < 1.0
    assert len(outcome) == 3
    assert all(isinstance(item, httpx.HTTPError) for item in outcome)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"nth": 2}, [200, 500, 200, 200]),
        ({"first": 2}, [500, 500, 200, 200]),
        ({}, [500, 500, 500, 500]),
        ({"model": "openai/gpt-x"}, [200, 500, 200, 500]),
        ({"path": "/messages"}, [500, 200, 500, 200]),
    ],
    ids=["nth", "first", "every", "model", "path"],
)
def test_rule_matching(provider: LocalProvider, rule: dict[str, Any], expected: list[int]) -> None:
    added = provider.add_fault("server_error", **rule)
    calls = [
        post(provider, ANTHROPIC, model="claude"),
        post(provider, OPENAI, model="gpt-x"),
        post(provider, ANTHROPIC, model="claude"),
        post(provider, OPENAI, model="gpt-x"),
    ]
    assert [r.status_code for r in calls] == expected
    assert provider.fired(added) == expected.count(500)


def test_probability_is_reproducible_with_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with (
            LocalProvider(seed=seed) as provider,
            httpx.Client(base_url=provider.base_url) as client,
        ):
            provider.add_fault("unavailable", probability=0.5)
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            return [client.post(OPENAI, json=body).status_code for _ in range(20)]

    first = statuses(7)
    assert first == statuses(7)
    assert 0 < first.count(503) < 20


def test_latency_rules_and_base_latency(provider: LocalProvider) -> None:
    # The gap is wide so that a loaded machine cannot make the fast call look slow.
    provider.add_latency(0.3, model="gpt-slow")
    started = time.perf_counter()
    post(provider, model="gpt-slow")
    slow = time.perf_counter() - started
    started = time.perf_counter()
    post(provider, model="gpt-fast")
    fast = time.perf_counter() - started
    assert slow >= 0.3 > fast
    provider.latency_s = 0.03
    started = time.perf_counter()
    post(provider, model="gpt-fast")
    assert time.perf_counter() - started >= 0.03


def test_first_firing_fault_wins_and_latencies_add(provider: LocalProvider) -> None:
    latency = provider.add_latency(0.02)
    auth = provider.add_fault("auth", latency_s=0.02)
    server = provider.add_fault("server_error", latency_s=0.5)
    started = time.perf_counter()
    assert post(provider).status_code == 401
    assert 0.04 <= time.perf_counter() - started < 0.5
    assert (provider.fired(latency), provider.fired(auth), provider.fired(server)) == (1, 1, 0)


def test_rules_can_be_removed_and_cleared(provider: LocalProvider) -> None:
    auth = provider.add_fault("auth")
    server = provider.add_rule(FaultRule(fault="server_error"))
    assert provider.rules == (auth, server)
    provider.remove_rule(auth)
    assert post(provider).status_code == 500
    provider.clear_faults()
    assert provider.rules == ()
    assert post(provider).status_code == 200


@pytest.mark.parametrize(
    "options",
    [
        {"fault": "explode"},
        {"fault": 42},
        {"fault": "hang", "nth": 0},
        {"fault": "hang", "first": -1},
        {"fault": "hang", "probability": 1.5},
        {"latency_s": -1.0},
    ],
)
def test_invalid_rules_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        FaultRule(**options)


def test_faults_can_change_while_requests_flow(provider: LocalProvider) -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            rule = provider.add_fault("server_error", model="other-model")
            provider.remove_rule(rule)
            time.sleep(0.0001)  # yield the GIL so the server thread is not starved

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        with httpx.Client(base_url=provider.base_url) as client:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
            statuses = {client.post(OPENAI, json=body).status_code for _ in range(50)}
    finally:
        stop.set()
        thread.join()
    assert statuses == {200}
