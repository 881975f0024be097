"""What the comparison apps share: the request body, the provider URL and the DSPy model."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

MODEL = "openai/gpt-4o-mini"


class PredictionRequest(BaseModel):
    """The reference app's request body."""

    prompt: str
    model_id: str = "gpt-4o-mini"


def provider_api_base() -> str:
    """The OpenAI-style ``api_base`` of the local provider the harness started."""
    return os.environ["LLM_SERVER_PROVIDER_URL"].rstrip("/") + "/v1"


def make_lm() -> Any:
    """The model as a careful author builds it without the library.

    Same settings as the reference app's YAML (max_tokens, temperature) and DSPy's native
    engine, which ``auto`` picks for ``openai/`` here, as the library pins it; the cache off
    (every prompt is distinct, and a cache would also hide the provider). DSPy's own retries
    stay at their default: on the success path they cost nothing.
    """
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    return dspy.LM(
        MODEL,
        api_base=provider_api_base(),
        api_key="test",
        cache=False,
        max_tokens=3000,
        temperature=0.7,
    )


def predictor_signature() -> Any:
    """The reference app's ``input -> output`` signature (imports DSPy)."""
    from llm_server.models.predictor import Predictor

    return Predictor
