"""Optimization runs: compile, evaluate before and after, save a new version.

Public at :mod:`llm_server.models.optimization`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage
from llm_server.core.pricing import ModelPrice
from llm_server.programs._manager import ProgramManager
from llm_server.programs._versioning import hash_trainset

__all__ = ["OptimizationRun", "optimize_program"]


class _Models(Protocol):
    def get_lm(self, model_id: str) -> Any: ...

    def get_price(self, model_id: str) -> ModelPrice | None: ...


@dataclass(frozen=True, slots=True)
class OptimizationRun:
    """What one optimization did (also kept in the new version's manifest).

    Attributes:
        program_id: The program.
        parent_version: The version it started from (the one served then).
        version: The new, saved and not promoted, version.
        optimizer: The optimizer's class name.
        score_before: The parent's devset score (``dspy.Evaluate``'s, 0-100).
        score_after: The new version's devset score.
        trainset_sha256: Fingerprint of the training examples.
        trainset_size: How many.
        devset_sha256: Fingerprint of the evaluation examples.
        devset_size: How many.
        usage: Tokens the optimization (evaluations included) used.
        cost_usd: What they cost (``None`` when the model's price is unknown).
        duration_s: Wall time.
    """

    program_id: str
    parent_version: str
    version: str
    optimizer: str
    score_before: float
    score_after: float
    trainset_sha256: str
    trainset_size: int
    devset_sha256: str
    devset_size: int
    usage: TokenUsage
    cost_usd: float | None
    duration_s: float


def optimize_program(
    programs: ProgramManager,
    models: _Models,
    program_id: str,
    *,
    optimizer: Any,
    trainset: Sequence[Any],
    devset: Sequence[Any],
    metric: Callable[..., Any],
    model_id: str,
    optimizer_settings: Mapping[str, Any] | None = None,
    compile_options: Mapping[str, Any] | None = None,
    num_threads: int = 1,
    notes: str | None = None,
) -> OptimizationRun:
    """Optimize the served version of ``program_id`` and save the result as a new version.

    Blocking (optimizers are): call it from a script, a job or a worker thread.

    Args:
        programs: The program manager (the program must be registered).
        models: The model manager (``get_lm`` and ``get_price`` are used).
        program_id: The program.
        optimizer: A DSPy optimizer (``dspy.BootstrapFewShot(...)``, ``dspy.MIPROv2(...)``).
        trainset: Examples to compile on.
        devset: Examples to score the program on, before and after.
        metric: ``metric(example, prediction, trace=None)``, as DSPy's ``Evaluate`` takes it.
        model_id: The configured model the optimizer and the evaluations call.
        optimizer_settings: What to record about the optimizer's settings (JSON).
        compile_options: Extra keyword arguments for ``optimizer.compile``.
        num_threads: Threads of each evaluation.
        notes: Free text for the manifest.

    Returns:
        The run; its ``version`` is saved, not served.
    """
    import dspy

    parent = programs.registry.get_program_metadata(program_id).version
    program = programs.get_program(program_id, parent)
    evaluate = dspy.Evaluate(
        devset=list(devset),
        metric=metric,
        num_threads=num_threads,
        display_progress=False,
        display_table=False,
    )
    started = time.perf_counter()
    with dspy.context(lm=models.get_lm(model_id)), dspy.track_usage() as tracker:
        before = float(evaluate(program).score)
        optimized = optimizer.compile(program, trainset=list(trainset), **(compile_options or {}))
        after = float(evaluate(optimized).score)
    duration = time.perf_counter() - started
    prompt = completion = 0
    for totals in tracker.get_total_tokens().values():
        prompt += int(totals.get("prompt_tokens") or 0)
        completion += int(totals.get("completion_tokens") or 0)
    usage = TokenUsage(prompt, completion, prompt + completion, TokenCountMethod.EXACT)
    price = models.get_price(model_id)
    cost = price.cost_usd(usage) if price is not None else None
    devset_sha = hash_trainset(devset)
    evaluation = {
        "metric": getattr(metric, "__qualname__", type(metric).__name__),
        "score_before": before,
        "score_after": after,
        "devset_sha256": devset_sha,
        "devset_size": len(devset),
        "model_id": model_id,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
        "cost_usd": cost,
        "duration_s": round(duration, 3),
    }
    for name, examples in (("trainset", trainset), ("devset", devset)):
        source = getattr(examples, "provenance", None)  # a TrafficDataset: its query, fingerprint
        if isinstance(source, Mapping):
            evaluation[f"{name}_source"] = dict(source)
    saved = programs.save_program_version(
        program_id,
        optimized,
        parent_version=parent,
        optimizer=type(optimizer).__name__,
        optimizer_settings=optimizer_settings,
        score=after,
        trainset=trainset,
        notes=notes,
        evaluation=evaluation,
    )
    return OptimizationRun(
        program_id=program_id,
        parent_version=parent,
        version=saved.version,
        optimizer=type(optimizer).__name__,
        score_before=before,
        score_after=after,
        trainset_sha256=hash_trainset(trainset),
        trainset_size=len(trainset),
        devset_sha256=devset_sha,
        devset_size=len(devset),
        usage=usage,
        cost_usd=cost,
        duration_s=duration,
    )
