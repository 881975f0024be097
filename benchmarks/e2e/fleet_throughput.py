"""The fleet's throughput with Redis against without, in paired rounds: see ``fleet.py``'s
front page (**Throughput**); ``python benchmarks/e2e/fleet.py --throughput`` or ``--aa``."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e import _paired, _procs
from e2e._fleet_apps import (
    BODY,
    CONCURRENCY,
    PATH,
    app_env,
    counted_round,
    deal,
    fleet,
    redis_calls,
    redis_pid,
    redis_server,
    wait_ready,
)

# blocks (both apps started anew for each), rounds per block (a multiple of 4: each app loaded
# first and second, and after the other, equally often), window and warm-up seconds of each
# load. Two apps started alike are not alike: in an A/A run of 32 rounds on one pair of apps
# (Redis against Redis, quiet machine) the ratio read 1.034 (90 %: 1.021-1.054), the CPU per
# request 0.967 (0.953-0.981): an interval over the rounds of one pair of apps does not cover
# what sets that pair apart (hash seeds, memory layout), so the pairs are several.
# A full run's 3 x 8 rounds take ~2 min (2.2 min with the round trips counted; 8 alternating
# rounds of 4 s loads on one pair took ~2 min).
THROUGHPUT_FULL = (3, 8, 1.0, 0.4)
THROUGHPUT_QUICK = (2, 4, 0.6, 0.3)
QUIET_CORES = 0.1  # a round in which no other process used more than this is "quiet"


def _app_figures(rounds: list[dict[str, dict[str, Any]]], name: str) -> dict[str, Any]:
    """One app over every round: pooled throughput, p50/p99 and each round's throughput."""
    pooled = _paired.pooled(rounds, name)
    return {
        "completed": sum(r[name]["completed"] for r in rounds),
        "errors": sum(r[name]["errors"] for r in rounds),
        "throughput": pooled["throughput"],
        "p50_ms": pooled["p50_ms"],
        "p99_ms": pooled["p99_ms"],
        "rounds": pooled["round_throughput"],
    }


def _block(
    folder: Path,
    provider: _procs.Provider,
    redis_url: str,
    envs: dict[str, dict[str, str]],
    *,
    rounds: int,
    window_s: float,
    warmup_s: float,
    scripts: dict[str, list[int]],
    splits: dict[str, list[list[int]]],
) -> list[dict[str, dict[str, Any]]]:
    """One pair of apps (``envs``: each app's environment), started, loaded in ``rounds``
    paired rounds and stopped; per round, each app's load. Adds to ``scripts`` the scripts
    Redis ran during each app's loads and to ``splits`` each load's deal of connections."""
    paths = dict.fromkeys(envs, (PATH, BODY))
    last = [0]
    with contextlib.ExitStack() as stack:
        apps = {
            name: stack.enter_context(
                fleet(folder, provider.base_url, workers=2, env=env, ready=False)
            )
            for name, env in envs.items()
        }
        wait_ready(list(apps.values()), workers=2)  # both started at once: half the wait
        generators = {
            # the provider, redis-server and the app not loaded are the load's helpers: what
            # else used the machine's CPU (``other_processes_cores``) is then truly foreign
            name: stack.enter_context(
                _procs.load_generator(
                    app.port,
                    concurrency=CONCURRENCY,
                    server_pid=app.process.pid,
                    helper_pids=(
                        provider.process.pid,
                        redis_pid(redis_url),
                        *(other.process.pid for other in apps.values() if other is not app),
                    ),
                )
            )
            for name, app in apps.items()
        }
        for generator in generators.values():  # warm workers, connections, fleet leases
            generator.load(path=PATH, body=BODY, duration=2.0, warmup=1.0)
        dealt = {name: deal(generators[name], app) for name, app in apps.items()}
        last[0] = redis_calls(redis_url)

        def after(name: str) -> None:
            """Scripts Redis ran during the load just done (its warm-up and drain included),
            and how its connections were dealt to the workers; then new ones for the next
            load (with the same ones for every round, one deal would weigh on every round of
            that app)."""
            scripts[name].append(redis_calls(redis_url) - last[0])
            splits[name].append(dealt[name])
            dealt[name] = deal(generators[name], apps[name])
            last[0] = redis_calls(redis_url)  # (the deal's time, idle, not counted)

        return _procs.load_rounds(
            generators, paths, rounds=rounds, window_s=window_s, warmup_s=warmup_s, after=after
        )


def _ratios(loads: list[dict[str, dict[str, Any]]], first: str, second: str) -> list[float]:
    """Each round's throughput ratio, ``first`` / ``second``."""
    return [r[first]["throughput"] / r[second]["throughput"] for r in loads]


def throughput(
    folder: Path,
    provider: _procs.Provider,
    redis_url: str,
    *,
    quick: bool,
    kinds: tuple[str, str] = ("redis", "local"),
) -> dict[str, Any]:
    """2 workers with Redis vs without, c=64, in paired rounds: the throughput ratio (median of
    the rounds' ratios), the workers' CPU per request, and Redis scripts per request.

    ``kinds`` names the two apps compared (``"redis"`` or ``"local"``); the same kind twice is
    an A/A run (the second app's name ends in ``_again``): what the design reads when there is
    no difference to find.
    """
    blocks, rounds, window_s, warmup_s = THROUGHPUT_QUICK if quick else THROUGHPUT_FULL
    first, second = kinds
    names = (first, second if second != first else f"{second}_again")
    envs = {
        name: app_env(kind, redis_url, f"bench-{name}")
        for name, kind in zip(names, kinds, strict=True)
    }
    scripts: dict[str, list[int]] = {name: [] for name in names}
    splits: dict[str, list[list[int]]] = {name: [] for name in names}
    started = time.perf_counter()
    loads: list[dict[str, dict[str, Any]]] = []
    block_ratios = []
    for index in range(blocks):
        block = _block(
            folder,
            provider,
            redis_url,
            # started in turn first and second (and first loaded in the first round)
            envs if index % 2 == 0 else dict(reversed(envs.items())),
            rounds=rounds,
            window_s=window_s,
            warmup_s=warmup_s,
            scripts=scripts,
            splits=splits,
        )
        loads += block
        block_ratios.append(round(statistics.median(_ratios(block, *names)), 3))
    rounds_s = time.perf_counter() - started
    paired = _paired.compare(loads, names[0], names[1], lambda off: 0.0)
    foreign = [max(_paired.foreign_cpu(load) for load in r.values()) for r in loads]
    quiet = [r for r, cores in zip(loads, foreign, strict=True) if cores < QUIET_CORES]
    del paired["p99_over_allowance_ms"]  # no p99 rule here: the same as p99_delta_ms
    figures = {name: _app_figures(loads, name) for name in names}
    # a load's served requests, its warm-up's included, as Redis's counts include the warm-up
    served = {
        name: [r[name]["completed"] + warmup_s * r[name]["throughput"] for r in loads]
        for name in names
    }
    counted = (
        counted_round(folder, provider.base_url, envs["redis"], window=4.0)
        if names == ("redis", "local")
        else {}
    )
    ratio = paired["throughput_ratio"]
    return {
        "workers": 2,
        "concurrency": CONCURRENCY,
        "blocks": blocks,
        "rounds": blocks * rounds,
        "window_s": window_s,
        "warmup_s": warmup_s,
        "rounds_s": round(rounds_s, 1),
        "apps": figures,
        # the verdict: the median over the rounds of each round's ratio (the two loads of a
        # round ~2 s apart see about the same machine), its IQR and 90 % bootstrap interval
        "ratio": ratio["median"],
        "ratio_iqr": ratio["iqr"],
        "ratio_ci90": ratio["ci90"],
        # each block's median ratio (a pair of apps of its own): the spread the rounds miss
        "block_ratios": block_ratios,
        "ratio_pooled": round(figures[names[0]]["throughput"] / figures[names[1]]["throughput"], 3),
        "cpu_ratio": paired["cpu_ratio"]["median"],
        "cpu_ratio_ci90": paired["cpu_ratio"]["ci90"],
        "paired": paired,
        # the workers' CPU (every thread) per request served in the window, median round
        "cpu_us_per_request": {
            name: round(
                statistics.median(_paired.cpu_ms_per_request(r[name]) * 1000 for r in loads), 1
            )
            for name in names
        },
        # a round's most CPU used by other processes during one of its loads (cores)
        "other_processes_cores": _paired.summary(foreign),
        "quiet_rounds": len(quiet),
        # for reference: the same over the rounds nothing else ran in (not the verdict)
        "ratio_quiet_rounds": (
            _paired.compare(quiet, names[0], names[1], lambda off: 0.0)["throughput_ratio"]
            if len(quiet) >= 4
            else None
        ),
        # each round's ratio and other processes' cores, in the order run
        "round_ratios": [round(ratio, 3) for ratio in _ratios(loads, *names)],
        "round_other_cores": [round(cores, 2) for cores in foreign],
        # each round's deal of the 64 connections to the two workers, most first
        "connections_per_worker": splits,
        "redis_scripts_per_request": (
            round(sum(scripts[names[0]]) / sum(served[names[0]]), 4) if first == "redis" else 0.0
        ),
        "round_trips_per_request": dict(sorted(counted.items(), key=lambda item: -item[1])),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def measure_throughput(kinds: tuple[str, str], *, quick: bool = False) -> dict[str, Any]:
    """The throughput part alone: ``kinds`` against each other (see :func:`throughput`)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as redis_url,
        _procs.provider() as provider,
    ):
        return throughput(Path(tmp), provider, redis_url, quick=quick, kinds=kinds)
