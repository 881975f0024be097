"""Pure helpers for building a model's ``dspy.LM``: API keys, endpoints, reserved options.

Nothing here imports DSPy or LiteLLM, so the rules can be read (and tested) on their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from llm_server.core.errors import ConfigurationError, MissingAPIKeyError
from llm_server.core.model_config import ModelConfig

__all__ = [
    "LOCAL_PLACEHOLDER_KEY",
    "PROVIDER_KEY_ENV",
    "RESERVED_PARAMS",
    "ResolvedEngine",
    "ResolvedKey",
    "check_additional_params",
    "is_local_endpoint",
    "normalise_api_base",
    "resolve_api_key",
]

ResolvedEngine = Literal["lm15", "litellm"]

PROVIDER_KEY_ENV: Final[Mapping[str, str]] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "huggingface": "HUGGINGFACE_API_KEY",
    "groq": "GROQ_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "xai": "XAI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "cohere": "COHERE_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "azure": "AZURE_API_KEY",
    "cerebras": "CEREBRAS_API_KEY",
    "deepinfra": "DEEPINFRA_API_KEY",
}
"""The environment variable each provider's key is read from when the YAML names none."""

# Local servers and clouds that authenticate without an API key (IAM, ADC, none at all).
_KEYLESS_PROVIDERS: Final = frozenset(
    {"ollama", "ollama_chat", "hosted_vllm", "lm_studio", "bedrock", "sagemaker", "vertex_ai"}
)

LOCAL_PLACEHOLDER_KEY: Final = "llm-server-local-no-key"
"""Sent to an endpoint on 127.0.0.1/localhost when no key is configured (clients insist on one)."""

RESERVED_PARAMS: Final = frozenset(
    {
        "model",
        "engine",
        "async_engine",
        "cache",
        "num_retries",
        "api_key",
        "api_base",
        "base_url",
        "timeout",
        "max_tokens",
        "max_completion_tokens",
    }
)
"""``additional_params`` keys the framework sets itself (from their own YAML keys)."""


@dataclass(frozen=True, slots=True)
class ResolvedKey:
    """Where a model's API key came from.

    Attributes:
        value: The key, or ``None`` to let the provider's client find its own credentials.
        env_var: The environment variable it was read from, if any.
        placeholder: Whether ``value`` is the local placeholder (no real key configured).
    """

    value: str | None
    env_var: str | None
    placeholder: bool = False


def is_local_endpoint(api_base: str | None) -> bool:
    """Whether ``api_base`` points at this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    if not api_base:
        return False
    host = urlsplit(api_base if "//" in api_base else f"//{api_base}").hostname
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(model_id: str, config: ModelConfig, environ: Mapping[str, str]) -> ResolvedKey:
    """Find ``config``'s API key: YAML ``api_key``, YAML ``api_key_env``, the provider's variable.

    Raises:
        MissingAPIKeyError: The key's variable is not set (the message names it). An endpoint
            on this machine with no explicit ``api_key_env`` gets a placeholder instead.
    """
    if config.api_key is not None:
        value = config.api_key.get_secret_value()
        if not value.strip():
            raise MissingAPIKeyError(
                f"model {model_id!r}: 'api_key' is empty", model_id=model_id, env_var=None
            )
        return ResolvedKey(value=value, env_var=None)
    env_var = config.api_key_env or PROVIDER_KEY_ENV.get(config.provider)
    if env_var is not None and environ.get(env_var, "").strip():
        return ResolvedKey(value=environ[env_var].strip(), env_var=env_var)
    if config.api_key_env is None and is_local_endpoint(config.api_base):
        return ResolvedKey(value=LOCAL_PLACEHOLDER_KEY, env_var=None, placeholder=True)
    if env_var is None or (config.api_key_env is None and config.provider in _KEYLESS_PROVIDERS):
        # Unknown or keyless provider: its client resolves credentials itself.
        return ResolvedKey(value=None, env_var=None)
    raise MissingAPIKeyError(
        f"model {model_id!r} ({config.model_name}): environment variable {env_var} is not set; "
        f"set it, or give the model 'api_key: ${{SOME_VAR}}' or 'api_key_env: SOME_VAR'",
        model_id=model_id,
        env_var=env_var,
    )


def normalise_api_base(provider: str, api_base: str | None, engine: ResolvedEngine) -> str | None:
    """The ``api_base`` to hand to ``engine`` so both engines reach the same endpoint.

    Users write one base per model, up to and including ``/v1`` as for OpenAI
    (``http://127.0.0.1:8001/v1``); a base without ``/v1`` means the same thing. For OpenAI-style
    providers both engines take it as written. For Anthropic, DSPy's lm15 wants the ``/v1`` form
    and appends ``/messages``, while LiteLLM wants the root and appends ``/v1/messages``.
    """
    if api_base is None:
        return None
    base = api_base.rstrip("/")
    if provider != "anthropic":
        return base
    root = base.removesuffix("/v1")
    return root if engine == "litellm" else f"{root}/v1"


def check_additional_params(model_id: str, config: ModelConfig) -> None:
    """Refuse ``additional_params`` keys the framework sets from their own YAML keys.

    Raises:
        ConfigurationError: A reserved key was given (the message says which YAML key to use).
    """
    clash = sorted(RESERVED_PARAMS & set(config.additional_params))
    if clash:
        raise ConfigurationError(
            f"model {model_id!r}: 'additional_params' may not set {', '.join(clash)}; use the "
            "model's own keys ('max_tokens', 'api_base', 'api_key'/'api_key_env', 'timeout_s', "
            "'cache', 'engine'); retries are configured under 'retry'"
        )
