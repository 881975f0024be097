"""Run a DSPy optimizer on a configured model, evaluate before and after, save the result.

::

    run = optimize_program(
        programs, models, "qa",
        optimizer=dspy.BootstrapFewShot(metric=exact, max_bootstrapped_demos=4),
        trainset=train, devset=dev, metric=exact, model_id="gpt-4o-mini",
    )
    print(run.score_before, run.score_after, run.version, run.cost_usd)
    if run.score_after > run.score_before:
        programs.promote("qa", run.version, actor="nightly-job")

The run evaluates the served version on the devset, compiles it on the trainset, evaluates
the result, and saves it as a new version whose manifest records the optimizer and its
settings, both scores, the datasets' fingerprints and sizes, and the tokens and cost the
optimization itself used. It does not promote: promotion is a separate, explicit step.

Every model call goes through the configured model's ``dspy.LM`` (its endpoint, key, timeout,
and ``rate_limit:``), so a nightly optimization cannot starve the served traffic of its
provider quota. The optimizer's calls are not retried or circuit-broken (DSPy optimizers call
the LM directly).
"""

from llm_server.programs._optimization import OptimizationRun, optimize_program

__all__ = ["OptimizationRun", "optimize_program"]
