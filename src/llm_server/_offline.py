"""Keep DSPy, LiteLLM and tiktoken off the network.

``import litellm`` (and DSPy's first priced call) try to download a model price map unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set before the import; tiktoken downloads its BPE files
unless ``TIKTOKEN_CACHE_DIR`` points at a folder that holds them. LiteLLM ships cl100k_base,
o200k_base and p50k_base, so we point tiktoken there. Call :func:`ensure_offline` before the
first import of any of them; it never imports them itself and is idempotent.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

__all__ = ["encoding_for_model", "ensure_offline", "litellm_package_dir"]


def litellm_package_dir() -> Path | None:
    """The installed ``litellm`` package folder, found without importing it."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def ensure_offline() -> None:
    """Set the environment so that LiteLLM and tiktoken never reach the network.

    LiteLLM fetches catalogs of its own unless told not to: its price map (at import), the
    Anthropic beta-headers config (in a thread, on the first Anthropic request), its blog
    feed. ``LITELLM_OFFLINE_MODE`` covers every fetch LiteLLM makes of its own accord (not the
    providers the configuration names); the per-file switches are kept for older versions.
    A value the host set is left alone.
    """
    for name in (
        "LITELLM_OFFLINE_MODE",
        "LITELLM_LOCAL_MODEL_COST_MAP",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
        "LITELLM_LOCAL_BLOG_POSTS",
    ):
        os.environ.setdefault(name, "True")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        package = litellm_package_dir()
        if package is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(package / "litellm_core_utils" / "tokenizers")


@functools.cache
def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for ``model`` (provider prefix allowed), loaded offline.

    Models tiktoken does not know (Anthropic, Gemini, ...) get ``cl100k_base``, as LiteLLM's
    own fallback does; encodings not bundled offline fall back to ``cl100k_base`` too.
    """
    ensure_offline()
    import tiktoken

    name = model.rsplit("/", 1)[-1]
    try:
        encoding_name = tiktoken.encoding_name_for_model(name)
    except KeyError:
        encoding_name = "cl100k_base"
    if encoding_name not in {"cl100k_base", "o200k_base", "p50k_base"}:
        encoding_name = "cl100k_base"
    return tiktoken.get_encoding(encoding_name)
