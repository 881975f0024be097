"""``python -m llm_server.traffic export PROGRAM_ID ...``: a traffic dataset as JSONL.

One JSON object per line (``execution_id``, ``inputs``, ``outputs``) on standard output or
``--output``; the number of examples and the dataset's fingerprint go to standard error.
The store is ``--store`` (a SQLite file or a ``postgresql://`` URL), else the one the
settings name (``LLM_SERVER_PROGRAM_STORE``, else ``LLM_SERVER_CAPTURE_PATH``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime

from llm_server.core.errors import LLMServerError
from llm_server.core.telemetry._redaction import redact


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a traffic dataset as JSONL")
    export.add_argument("program_id")
    export.add_argument("--store", help="a SQLite file or a postgresql:// URL")
    export.add_argument("--schema", default="llm_server", help="PostgreSQL schema")
    export.add_argument("--version", help="only requests this version answered")
    export.add_argument("--since", type=datetime.fromisoformat, help="ISO time, with its zone")
    export.add_argument("--min-score", type=float, help="lowest mean feedback score")
    export.add_argument("--label", help="only requests with this feedback label")
    export.add_argument("--limit", type=int, help="at most this many, the most recent")
    export.add_argument("--kind", choices=["human", "judge"], help="count one kind of feedback")
    export.add_argument("--output", help="the JSONL file (default: standard output)")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m llm_server.traffic") -> int:
    """Run the command line (also ``llm-server traffic``, named ``prog`` in its usage);
    returns the exit status."""
    args = _parser(prog).parse_args(argv)
    from llm_server.traffic import (
        PostgresTrafficStore,
        SqliteTrafficStore,
        default_traffic_store,
        traffic_dataset,
    )

    try:
        if args.store is None:
            store = default_traffic_store()
        elif args.store.startswith(("postgresql://", "postgres://")):
            store = PostgresTrafficStore(args.store, schema=args.schema)
        else:
            store = SqliteTrafficStore(args.store)
        try:
            dataset = traffic_dataset(
                store,
                args.program_id,
                version=args.version,
                since=args.since,
                min_score=args.min_score,
                label=args.label,
                limit=args.limit,
                kind=args.kind,
            )
        finally:
            store.close()
        if args.output is None:
            dataset.write_jsonl(sys.stdout)
        else:
            with open(args.output, "w", encoding="utf-8") as out:
                dataset.write_jsonl(out)
    except (LLMServerError, OSError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(
        f"exported {len(dataset)} examples of {args.program_id} "
        f"(fingerprint {dataset.fingerprint})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
