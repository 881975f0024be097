"""``llm-server``: releases, canaries and the traffic export from a terminal or a pipeline.

Reads the app's own settings (environment and ``.env``): ``LLM_SERVER_PROGRAM_STORE`` (the
PostgreSQL store every replica follows) and ``LLM_SERVER_REDIS_URL`` (the fleet's live
figures). Every command prints JSON and exits 0, or prints ``llm-server: <problem>`` and exits 1::

    llm-server versions summarize
    llm-server releases summarize
    llm-server promote summarize 1.1.0 --actor ana --reason "eval +4 points"
    llm-server rollback summarize --actor ana --reason "complaints"
    llm-server canary start summarize 1.1.0 --weight 0.1 --sticky header:X-Session-Id \\
        --min-requests 200 --promote-after 5000 --max-score-drop 0.1 --score-kind judge
    llm-server canary watch summarize --every 5 --times 12
    llm-server canary end summarize --outcome rollback --reason "slower"
    llm-server traffic export summarize --min-score 1 --output good.jsonl

``llm-server traffic ...`` is ``python -m llm_server.traffic ...`` (its own exit statuses:
0 done, 2 refused or bad usage).

Releases and canaries need the PostgreSQL store (with files they live in each app process:
use the app's admin routes, ``add_release_routes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import LLMServerError
from llm_server.core.telemetry._redaction import redact, register_secret
from llm_server.programs._canary import Canary, check_sticky, check_weight
from llm_server.programs._canary_guard import CanaryGuard
from llm_server.programs._version_stats import VersionFigures
from llm_server.programs._versioning import sort_versions

__all__ = ["main"]


class CommandError(Exception):
    """A problem to print, without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-server", description="Program versions, releases, canaries and traffic."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def program(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("program_id")
        return sub

    program("versions", "stored versions and the one released")
    program("releases", "every promotion and rollback")
    promote = program("promote", "serve a version on every replica")
    promote.add_argument("version")
    rollback = program("rollback", "serve the version released before the current one")
    for sub in (promote, rollback):
        sub.add_argument("--actor")
        sub.add_argument("--reason")

    commands.add_parser(  # listed for --help; main() hands its arguments on as they are
        "traffic",
        help="production traffic: 'traffic export PROGRAM_ID ...' (python -m llm_server.traffic)",
        add_help=False,
    )
    canary = commands.add_parser("canary", help="start, watch or end a canary")
    actions = canary.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="serve a version to a share of the traffic")
    start.add_argument("program_id")
    start.add_argument("version")
    start.add_argument("--weight", type=float, default=0.1)
    start.add_argument("--sticky", default="request", help="request, tenant or header:<Name>")
    start.add_argument("--no-guard", action="store_true", help="end it by hand only")
    start.add_argument("--min-requests", type=int, default=50)
    start.add_argument("--max-error-increase", type=float, default=0.02)
    start.add_argument("--max-parse-failure-increase", type=float, default=0.02)
    start.add_argument("--max-p95-ratio", type=float, default=1.5)
    start.add_argument("--max-cost-ratio", type=float, default=1.5)
    start.add_argument("--promote-after", type=int, help="promote after N clean canary requests")
    start.add_argument("--promote-after-s", type=float, default=0.0)
    start.add_argument(
        "--max-score-drop", type=float, help="roll back when the mean feedback score falls more"
    )
    start.add_argument("--min-scored-feedback", type=int, default=20)
    start.add_argument("--score-kind", choices=("human", "judge"), default="human")
    watch = actions.add_parser("watch", help="the running canary and its live figures")
    watch.add_argument("program_id")
    watch.add_argument("--every", type=float, default=0.0, help="seconds between prints")
    watch.add_argument("--times", type=int, default=1)
    history = actions.add_parser("list", help="every canary of a program")
    history.add_argument("program_id")
    end = actions.add_parser("end", help="promote or roll back the running canary")
    end.add_argument("program_id")
    end.add_argument("--outcome", choices=("promote", "rollback"), required=True)
    for sub in (start, end):
        sub.add_argument("--actor")
        sub.add_argument("--reason")
    return parser


def _store(settings: FrameworkSettings, *, files: bool = False) -> Any:
    if settings.program_store is None and files:
        from llm_server.programs._fs_storage import FileSystemStorageAdapter

        return FileSystemStorageAdapter(settings.llm_programs_dir)
    if settings.program_store is None:
        raise CommandError(
            "LLM_SERVER_PROGRAM_STORE is not set: releases and canaries from a console need "
            "the PostgreSQL store every replica follows (with files they live in each app "
            "process: use its admin routes)"
        )
    try:
        from llm_server.postgres import PostgresStorageAdapter
    except ImportError:
        raise CommandError(
            'the PostgreSQL driver is missing: pip install "llm-server-framework[postgres]"'
        ) from None
    return PostgresStorageAdapter(
        settings.program_store.get_secret_value(), schema=settings.program_store_schema
    )


def _served(store: Any, program_id: str) -> str:
    released = store.released_version(program_id)
    if released is not None:
        return str(released)
    versions = store.list_versions(program_id)
    if not versions:
        raise CommandError(f"program {program_id!r} has no stored versions")
    return str(versions[-1])


def _figures(settings: FrameworkSettings, canary: Canary) -> dict[str, Any] | None:
    """The fleet's live figures of a canary's two versions (``None`` without Redis)."""
    if settings.redis_url is None:
        return None
    try:
        import redis
    except ImportError:
        raise CommandError(
            "LLM_SERVER_REDIS_URL is set but redis-py is missing: "
            'pip install "llm-server-framework[fleet]"'
        ) from None

    from llm_server.fleet._version_stats import _figures as parse

    url, password = settings.redis_url.get_secret_value(), settings.redis_password
    register_secret(url)
    if password is not None:
        register_secret(password.get_secret_value())
    try:
        client = redis.Redis.from_url(
            url,
            password=password.get_secret_value() if password is not None else None,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            protocol=2,
        )
        try:
            found: dict[str, Any] = {}
            for side, version in (("stable", canary.stable_version), ("canary", canary.version)):
                key = ":".join(
                    (settings.redis_prefix, "vstats", canary.program_id, canary.id, version)
                )
                figures: VersionFigures = parse(client.hgetall(key) or {})
                found[side] = {"version": version, **figures.summary()}
            return found
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise CommandError(
            f"cannot read the live figures from Redis (LLM_SERVER_REDIS_URL): "
            f"{type(exc).__name__}: {redact(str(exc))}"
        ) from None


def _feedback(settings: FrameworkSettings, canary: Canary) -> dict[str, Any] | None:
    """Each side's feedback per kind since the canary started, from the traffic tables of the
    program store (``None`` when no program captures its traffic there: nothing is created)."""
    from llm_server.programs._canary_control import _epoch, _feedback_side

    if settings.program_store is None:
        return None
    url, schema = settings.program_store.get_secret_value(), settings.program_store_schema
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(
                "SELECT to_regclass(%s)", (f'"{schema}".traffic_feedback',)
            ).fetchone()
    except Exception as exc:
        raise CommandError(
            f"cannot read feedback: {type(exc).__name__}: {redact(str(exc)).strip()}"
        ) from None
    if row is None or row[0] is None:
        return None
    from llm_server.traffic._store_postgres import PostgresTrafficStore

    store = PostgresTrafficStore(url, schema=schema, max_connections=1)
    try:
        since = _epoch(canary.started_at)
        per_kind: dict[str, dict[str, Any] | None] = {
            kind: dict(store.feedback_summary(canary.program_id, kind=kind, since=since))
            for kind in ("human", "judge")
        }
    finally:
        store.close()
    return {
        side: {"version": version, **_feedback_side(per_kind, version)}
        for side, version in (("stable", canary.stable_version), ("canary", canary.version))
    }


def _canary_command(args: argparse.Namespace, settings: FrameworkSettings, store: Any) -> Any:
    pid = args.program_id
    if args.action == "start":
        guard = None
        if not args.no_guard:
            guard = CanaryGuard(
                max_error_rate_increase=args.max_error_increase,
                max_parse_failure_increase=args.max_parse_failure_increase,
                max_p95_ratio=args.max_p95_ratio,
                max_cost_ratio=args.max_cost_ratio,
                min_requests=args.min_requests,
                promote_after_requests=args.promote_after,
                promote_after_s=args.promote_after_s,
                max_score_drop=args.max_score_drop,
                min_scored_feedback=args.min_scored_feedback,
                score_kind=args.score_kind,
            )
        if args.version not in store.list_versions(pid):
            raise CommandError(f"program {pid!r} has no version {args.version!r}")
        draft = Canary(
            id="",
            program_id=pid,
            version=args.version,
            stable_version=_served(store, pid),
            weight=check_weight(args.weight),
            sticky=check_sticky(args.sticky),
            guard=guard,
            actor=args.actor,
            reason=args.reason,
            started_at="",
        )
        return store.start_canary(draft).to_dict()
    if args.action == "end":
        ended = store.end_canary(pid, outcome=args.outcome, actor=args.actor, reason=args.reason)
        return ended.to_dict()
    if args.action == "list":
        return [c.to_dict() for c in store.canaries(pid)]
    for turn in range(max(1, args.times)):  # watch
        running = store.active_canaries().get(pid)
        report = {
            "running": running.to_dict() if running else None,
            "figures": _figures(settings, running) if running else None,
            "feedback": _feedback(settings, running) if running else None,
        }
        print(json.dumps(report, indent=2), flush=True)
        if turn + 1 < args.times:
            time.sleep(args.every)
    return None


def _run(args: argparse.Namespace) -> Any:
    settings = FrameworkSettings()
    store = _store(settings, files=args.command == "versions")
    try:
        pid = args.program_id
        if args.command == "versions":
            versions = sort_versions(store.list_versions(pid))
            released = store.released_version(pid) if hasattr(store, "released_version") else None
            return {"program_id": pid, "released": released, "versions": versions}
        if args.command == "releases":
            return [dict(r) for r in store.releases(pid)]
        if args.command == "promote":
            if args.version not in store.list_versions(pid):
                raise CommandError(f"program {pid!r} has no version {args.version!r}")
            served = _served(store, pid)
            return dict(
                store.promote(
                    pid, args.version, actor=args.actor, reason=args.reason, served_before=served
                )
            )
        if args.command == "rollback":
            return dict(store.rollback(pid, actor=args.actor, reason=args.reason))
        return _canary_command(args, settings, store)
    finally:
        if hasattr(store, "close"):
            store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (0: done, 1: refused or failed, 2: bad usage)."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["traffic"]:  # the traffic console, as python -m llm_server.traffic
        from llm_server.traffic.__main__ import main as traffic_main

        return traffic_main(given[1:], prog="llm-server traffic")
    args = _parser().parse_args(given)
    try:
        result = _run(args)
    except (CommandError, LLMServerError) as exc:
        print(f"llm-server: {redact(str(exc))}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover -- ``python -m llm_server._cli``
    raise SystemExit(main())
