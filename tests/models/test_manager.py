"""ModelManager: startup, model info, engines, keys, endpoints, cache and history settings."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import dspy
import pytest
from _model_helpers import ENGINE_PROTOCOLS, MakeManager, model

from llm_server.core.errors import ConfigurationError, MissingAPIKeyError, ModelNotFoundError
from llm_server.core.model_interfaces import TokenCountMethod
from llm_server.core.streaming import Finished, stream_events
from llm_server.models._engine import LOCAL_PLACEHOLDER_KEY
from llm_server.models.dspy_backend import DSPyBackend
from llm_server.models.manager import ModelInfo, ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio

SUFFIXES = ("/v1", "/v1/")


async def test_model_info_dumps_exactly_the_envelope_model_block(make_manager: MakeManager) -> None:
    manager = make_manager({"gpt-4o-mini": model("openai", "auto", max_tokens=3000)})

    info = manager.model_info["gpt-4o-mini"]

    assert info.model_dump(by_alias=True) == {
        "id": "gpt-4o-mini",
        "provider": "openai",
        "base_model": "gpt-4o-mini",
    }
    assert info.model_name == "openai/gpt-4o-mini"
    assert info.max_tokens == 3000
    assert info.engine == "lm15"
    # From LiteLLM's bundled map, read offline.
    assert info.context_window == 128_000
    assert info.input_cost_per_million == pytest.approx(0.15)
    assert info.output_cost_per_million == pytest.approx(0.6)


def test_model_info_is_frozen() -> None:
    info = ModelInfo(
        id="m",
        provider="openai",
        base_model="x",
        model_name="openai/x",
        max_tokens=1,
        engine="lm15",
    )
    with pytest.raises(ValueError, match="frozen"):
        info.provider = "other"  # type: ignore[misc]


async def test_yaml_pricing_and_context_window_override_the_map(make_manager: MakeManager) -> None:
    manager = make_manager(
        {
            "custom": {
                "model_name": "openai/my-finetune",
                "context_window": 4096,
                "pricing": {"input_per_million": 2.0, "output_per_million": 8.0},
            },
            "unknown": {"model_name": "openai/not-a-real-model"},
        }
    )

    custom, unknown = manager.model_info["custom"], manager.model_info["unknown"]

    assert (custom.context_window, custom.input_cost_per_million) == (4096, 2.0)
    assert custom.output_cost_per_million == 8.0
    # An unknown model has no price and no context window: never a guess.
    assert unknown.context_window is None
    assert unknown.input_cost_per_million is None
    assert manager.get_price("unknown") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.get_lm("nope"),
        lambda m: m.get_model_config("nope"),
        lambda m: m.single_attempt_backend(dspy.Predict("q -> a"), "nope"),
        lambda m: m.reliable_backend(dspy.Predict("q -> a"), "nope"),
    ],
)
async def test_unknown_model_id_lists_known_ids(make_manager: MakeManager, call: object) -> None:
    manager = make_manager({"b": model("openai", "auto"), "a": model("anthropic", "auto")})

    with pytest.raises(ModelNotFoundError) as caught:
        call(manager)  # type: ignore[operator]

    assert caught.value.known == ["a", "b"]
    assert "'nope'" in str(caught.value)
    assert "a, b" in str(caught.value)


async def test_model_ids_keep_file_order(make_manager: MakeManager) -> None:
    manager = make_manager({"z": model("openai", "auto"), "a": model("openai", "auto")})
    assert manager.model_ids == ["z", "a"]
    assert manager.get_model_config("a").model_name == "openai/gpt-4o-mini"


@pytest.mark.parametrize(
    ("model_name", "engine", "default_engine", "expected"),
    [
        ("openai/gpt-4o-mini", None, "auto", "lm15"),
        ("anthropic/claude-sonnet-4-5", "auto", "auto", "lm15"),
        ("openai/gpt-4o-mini", "litellm", "auto", "litellm"),
        ("openai/gpt-4o-mini", None, "litellm", "litellm"),
        # DSPy's native engine cannot serve this provider: auto resolves to LiteLLM.
        ("huggingface/meta-llama/Meta-Llama-3.1-8B-Instruct", "auto", "auto", "litellm"),
    ],
)
async def test_engine_is_resolved_once_and_pinned(
    make_manager: MakeManager,
    model_name: str,
    engine: str | None,
    default_engine: str,
    expected: str,
) -> None:
    spec: dict[str, object] = {"model_name": model_name}
    if engine is not None:
        spec["engine"] = engine
    manager = make_manager({"m": spec}, default_engine=default_engine)

    assert manager.model_info["m"].engine == expected
    assert manager.get_lm("m").engine == expected  # passed to dspy.LM explicitly


async def test_lm_has_retries_and_cache_off_and_the_timeout(make_manager: MakeManager) -> None:
    manager = make_manager(
        {"fast": model("openai", "auto", timeout_s=2.5), "slow": model("openai", "litellm")},
        model_timeout_s=42.0,
    )

    fast, slow = manager.get_lm("fast"), manager.get_lm("slow")

    assert fast.num_retries == slow.num_retries == 0
    assert fast.cache is False
    assert slow.cache is False
    assert fast.kwargs["timeout"] == 2.5
    assert slow.kwargs["timeout"] == 42.0
    assert dspy.cache.enable_memory_cache is False
    assert dspy.cache.enable_disk_cache is False


async def test_no_history_is_kept_anywhere(make_manager: MakeManager) -> None:
    from dspy.clients.base_lm import GLOBAL_HISTORY

    manager = make_manager({"m": model("openai", "auto")})
    program = dspy.Predict("question -> answer")
    before = len(GLOBAL_HISTORY)

    for _ in range(3):
        await manager.single_attempt_backend(program, "m").predict({"question": "hi"})

    assert manager.get_lm("m").history == []
    assert program.history == []
    assert len(GLOBAL_HISTORY) == before


async def test_cache_opt_in_serves_the_second_call_from_memory(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    manager = make_manager({"cached": model("openai", "auto", cache=True)})
    backend = manager.single_attempt_backend(dspy.Predict("question -> answer"), "cached")

    first = await backend.predict({"question": "cache me please"})
    second = await backend.predict({"question": "cache me please"})

    assert len(provider.requests) == 1
    assert second.content.answer == first.content.answer
    assert first.usage is not None
    assert first.usage.method is TokenCountMethod.EXACT
    assert second.usage is not None
    assert second.usage.method is TokenCountMethod.CACHED
    assert second.usage.total_tokens == 0
    assert second.cost_usd == 0.0
    assert dspy.cache.enable_disk_cache is False  # memory only: no ~/.dspy_cache folder


# --- keys -----------------------------------------------------------------------------------


def test_missing_provider_key_fails_at_startup_naming_the_variable() -> None:
    config = StaticConfigProvider({"gpt": {"model_name": "openai/gpt-4o-mini"}})

    with pytest.raises(MissingAPIKeyError) as caught:
        ModelManager(config_provider=config, environ={})

    assert caught.value.env_var == "OPENAI_API_KEY"
    assert caught.value.model_id == "gpt"
    assert "OPENAI_API_KEY" in str(caught.value)


def test_missing_named_key_variable_fails_even_for_a_local_endpoint(
    provider: LocalProvider,
) -> None:
    config = StaticConfigProvider(
        {"m": model("openai", "auto", api_base=provider.openai_api_base, api_key_env="MY_KEY")}
    )
    with pytest.raises(MissingAPIKeyError, match="MY_KEY"):
        ModelManager(config_provider=config, environ={})


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
@pytest.mark.parametrize(
    "case",
    [
        # (model keys, environment, key the provider must receive)
        ({"api_key_env": "TEAM_KEY"}, {"TEAM_KEY": "team-secret-1"}, "team-secret-1"),
        ({"api_key": "inline-secret-2"}, {}, "inline-secret-2"),
        ({}, {}, LOCAL_PLACEHOLDER_KEY),  # local endpoint, no key configured
    ],
)
async def test_key_reaches_the_provider(
    make_manager: MakeManager,
    provider: LocalProvider,
    engine: str,
    protocol: str,
    case: tuple[dict[str, str], dict[str, str], str],
) -> None:
    spec, environ, sent_key = case
    manager = make_manager({"m": model(protocol, engine, **spec)}, environ=environ)

    await manager.single_attempt_backend(dspy.Predict("question -> answer"), "m").predict(
        {"question": "k"}
    )

    headers = provider.requests[-1].headers
    sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert sent == sent_key


def test_provider_default_variable_is_used(provider: LocalProvider) -> None:
    config = StaticConfigProvider({"m": {"model_name": "anthropic/claude-sonnet-4-5"}})
    manager = ModelManager(config_provider=config, environ={"ANTHROPIC_API_KEY": "sk-ant-xyz123"})
    assert manager.get_lm("m").kwargs["api_key"] == "sk-ant-xyz123"


async def test_reserved_additional_params_are_refused(make_manager: MakeManager) -> None:
    with pytest.raises(ConfigurationError, match="num_retries"):
        make_manager({"m": model("openai", "auto", additional_params={"num_retries": 3})})


# --- endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "protocol", "suffix"),
    [
        *[
            (engine, protocol, suffix)
            for engine, protocol in ENGINE_PROTOCOLS
            for suffix in SUFFIXES
        ],
        # Anthropic bases may also be written without /v1 (LiteLLM's own convention);
        # OpenAI-compatible bases are used as written (the path is the user's).
        *[(engine, "anthropic", "") for engine in ("auto", "litellm")],
    ],
)
async def test_one_api_base_reaches_the_same_endpoint_on_both_engines(
    make_manager: MakeManager, provider: LocalProvider, engine: str, protocol: str, suffix: str
) -> None:
    manager = make_manager({"m": model(protocol, engine, api_base=provider.base_url + suffix)})

    await manager.single_attempt_backend(dspy.Predict("question -> answer"), "m").predict(
        {"question": "p"}
    )

    expected = "/v1/messages" if protocol == "anthropic" else "/v1/chat/completions"
    assert provider.requests[-1].path == expected


def open_litellm_async_clients() -> list[object]:
    """The async HTTP clients LiteLLM's process-wide cache holds open."""
    import httpx
    import litellm

    found = []
    for client in litellm.in_memory_llm_clients_cache.cache_dict.values():
        http = getattr(client, "_client", None) or getattr(client, "client", None)
        if isinstance(http, httpx.AsyncClient) and not http.is_closed:
            found.append(client)
    return found


async def test_aclose_closes_pools_and_is_repeatable(make_manager: MakeManager) -> None:
    manager = make_manager({"a": model("openai", "auto"), "b": model("openai", "litellm")})
    for model_id in manager.model_ids:
        await manager.single_attempt_backend(dspy.Predict("q -> a"), model_id).predict({"q": "x"})
    assert open_litellm_async_clients()

    await manager.aclose()
    await manager.aclose()

    assert open_litellm_async_clients() == []


async def test_a_manager_built_after_another_was_closed_calls_litellm_on_the_same_loop(
    make_manager: MakeManager,
) -> None:
    # LiteLLM caches its clients per event loop; a closed one must not be handed out again.
    first = make_manager({"m": model("openai", "litellm")})
    await first.single_attempt_backend(dspy.Predict("q -> a"), "m").predict({"q": "x"})
    await first.aclose()

    second = make_manager({"m": model("openai", "litellm")})
    output = await second.single_attempt_backend(dspy.Predict("q -> a"), "m").predict({"q": "y"})

    assert output.content.a == "echo: y"


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_aclose_leaves_no_connection_open_after_streamed_calls(
    make_manager: MakeManager, provider: LocalProvider, engine: str, protocol: str
) -> None:
    # LiteLLM streams some providers' calls (Anthropic's) through a module-level client that
    # lives outside its client cache: it must be closed too, on every loop
    for question in ("first manager", "second manager"):  # a second one: a rebuilt client
        manager = make_manager({"m": model(protocol, engine)})
        backend = manager.single_attempt_backend(dspy.Predict("q -> a"), "m")
        call = functools.partial(backend.predict, {"q": question})
        # A stream its reader stops reading before the provider's last chunked bytes came in
        # is closed by the client, not kept alive (once in a full CI run, on a busy machine):
        # stream again until a connection is kept, so that aclose() has one to close
        for _ in range(5):
            events = [e async for e in stream_events(call)]
            assert isinstance(events[-1], Finished)
            assert events[-1].result.content.a == f"echo: {question}"
            if provider.open_connections:
                break
        assert provider.open_connections >= 1  # kept alive for the next call

        await manager.aclose()

        with anyio.fail_after(5):
            while provider.open_connections:  # noqa: ASYNC110 -- counted by the provider's thread
                await anyio.sleep(0.01)


# --- offline startup --------------------------------------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import ipaddress, socket, sys

    attempts = []

    def _loopback(address):
        host = address[0] if isinstance(address, tuple) else address
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if not _loopback(address):
            attempts.append(address)
            raise OSError("network disabled by test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback((host,)):
            attempts.append(host)
            raise OSError("DNS disabled by test")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo

    from llm_server.core.config import FrameworkSettings
    from llm_server.defaults import YamlConfigProvider
    from llm_server.models.manager import ModelManager

    manager = ModelManager(
        config_provider=YamlConfigProvider(sys.argv[1]), settings=FrameworkSettings()
    )
    assert "litellm" in sys.modules, "a LiteLLM model must import LiteLLM at startup"
    print(sorted(manager.model_info), {i.engine for i in manager.model_info.values()})
    print("ATTEMPTS", attempts)
    """
)


def test_startup_with_the_reference_config_never_touches_the_network(tmp_path: Path) -> None:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LITELLM_", "TIKTOKEN_", "DSPY_"))
    }
    environ.update(
        OPENAI_API_KEY="dummy-openai",
        ANTHROPIC_API_KEY="dummy-anthropic",
        GEMINI_API_KEY="dummy-gemini",
        HUGGINGFACE_API_KEY="dummy-hf",
        HOME=str(tmp_path),  # any ~/.dspy_cache would appear here
    )
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(REPO / "config" / "model_config.yml")],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "ATTEMPTS []" in result.stdout, result.stdout
    assert "claude-3.5-sonnet" in result.stdout
    assert not (tmp_path / ".dspy_cache").exists()


@pytest.mark.parametrize(
    ("old", "new", "composed"),
    [
        ("create_backend", "single_attempt_backend", False),
        ("build_backend", "reliable_backend", True),
    ],
)
async def test_the_old_backend_names_warn_and_keep_their_meaning(
    make_manager: MakeManager, old: str, new: str, composed: bool
) -> None:
    manager = make_manager({"m": model("openai", "auto")})
    with pytest.warns(DeprecationWarning, match=f"ModelManager.{new}"):
        backend = getattr(manager, old)(dspy.Predict("q -> a"), "m")
    assert isinstance(backend, DSPyBackend) is not composed
