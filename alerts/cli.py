"""``xlhub outbox list|replay`` and ``xlhub cap import FILE``.

    xlhub outbox list [--status dead|pending|delivering|delivered|all] [--target NAME]
    xlhub outbox replay ID... | --all-dead [--target NAME]
    xlhub cap import FILE [--allow-non-actual]

hub/cli.py calls :func:`register` with its subparsers and its ``database(settings)``
context manager (the embedded cluster when no database is configured); the functions
below also serve scripts and tests directly."""
from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from alerts.actor import Actor
from alerts.cap.parse import CapError
from alerts.cap.service import CapImport, import_cap
from alerts.cases.models import CaseError
from alerts.config import load_config
from alerts.delivery import outbox
from alerts.registry import RegistryView
from devices.broadcast import Voice
from devices.settings import DevicesSettings
from store import audit
from store.db import connect


def outbox_list(db_url: str, *, status: str | None = "dead", target: str | None = None,
                limit: int = 100) -> list[dict]:
    with connect(db_url) as conn:
        return outbox.list_messages(conn, status=None if status == "all" else status, target=target, limit=limit)


def outbox_replay(db_url: str, site_file: str | Path, *, ids: list[int] | None = None, all_dead: bool = False,
                  target: str | None = None, actor: str | None = None) -> list[int]:
    with connect(db_url) as conn:
        replayed = outbox.replay(conn, load_config(site_file), ids=ids, all_dead=all_dead, target=target)
        audit.record(conn, audit.AuditEntry(actor=actor or getpass.getuser(), actor_kind="system",
                                            action="cli.outbox.replay", target=target or "*",
                                            detail={"ids": replayed}))
        conn.execute("SELECT pg_notify('xlhub_outbox', '')")
    return replayed


def cap_import(db_url: str, site_file: str | Path, file: str | Path, *, allow_non_actual: bool = False,
               actor: str | None = None, var_dir: str | Path | None = None) -> CapImport:
    """``var_dir``: the hub's, where the warning's text is synthesised for the speakers
    (as the API does); None sends the text only."""
    data = Path(file).read_bytes()
    voice = Voice.from_settings(DevicesSettings(), Path(var_dir)) if var_dir is not None else None
    who = actor or getpass.getuser()
    with connect(db_url) as conn:
        registry = RegistryView()
        registry.refresh(conn)
        result = import_cap(conn, load_config(site_file), registry, data, Actor.system(f"cli:{who}"),
                            allow_non_actual=allow_non_actual, voice=voice)
        audit.record(conn, audit.AuditEntry(actor=who, actor_kind="system", action="cli.cap.import",
                                            target=result.case_number or "-",
                                            detail={"file": str(file), "action": result.action,
                                                    "cap_id": result.cap_id, "broadcast_id": result.broadcast_id}))
    return result


# ---------------------------------------------------------------------------- the commands

DatabaseFactory = Callable[[object], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def _configured_database(settings) -> Iterator[str]:
    if not settings.database_url:
        raise SystemExit("xlhub: XLHUB_DATABASE_URL is not set")
    yield settings.database_url


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def cmd_outbox(args, settings, *, database: DatabaseFactory) -> int:
    with database(settings) as url:
        if args.action == "list":
            rows = outbox_list(url, status=args.status, target=args.target, limit=args.limit)
            for r in rows:
                behind = f"  ({r['waiting_behind']} waiting behind)" if r["waiting_behind"] else ""
                print(f"{r['id']:>8}  {r['status']:<10} {r['target']:<20} {r['case_number']:<20} seq {r['seq']:<4} "
                      f"{r['event']:<16} attempts {r['attempts']:<3} {_when(r['dead_at'] or r['delivered_at'] or r['next_attempt_at'])}"
                      f"  {(r['last_error'] or '')[:80]}{behind}")
            print(f"{len(rows)} message(s)", file=sys.stderr)
            return 0
        if not args.ids and not args.all_dead:
            print("xlhub: give message ids or --all-dead", file=sys.stderr)
            return 2
        replayed = outbox_replay(url, settings.site_file, ids=args.ids, all_dead=args.all_dead, target=args.target)
        print(f"replayed {len(replayed)} message(s): {' '.join(map(str, replayed)) or '-'}")
        return 0 if replayed or args.all_dead else 1


def cmd_cap(args, settings, *, database: DatabaseFactory) -> int:
    with database(settings) as url:
        try:
            result = cap_import(url, settings.site_file, args.file, allow_non_actual=args.allow_non_actual,
                                var_dir=settings.var_dir)
        except (CapError, CaseError, OSError) as exc:
            print(f"xlhub: {args.file}: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
            return 1
    print(f"{result.action}: case {result.case_number or '-'}; broadcast {result.broadcast_id or '-'} "
          f"to {result.speakers} speaker(s) under {', '.join(result.areas) or '-'}"
          + (f"; plays at {result.scheduled_at.isoformat()}" if result.scheduled_at else "")
          + (f"; stops at {result.ends_at.isoformat()}" if result.ends_at else "")
          + (f"; stopped {', '.join(result.stopped)}" if result.stopped else "")
          + (f" ({result.reason})" if result.reason else ""))
    return 0


def register(subparsers: argparse._SubParsersAction, database: DatabaseFactory | None = None) -> None:
    """Add ``outbox`` and ``cap`` to the ``xlhub`` command."""
    database = database or _configured_database
    ob = subparsers.add_parser("outbox", help="messages to case systems: dead letters and replay")
    osub = ob.add_subparsers(dest="action", required=True)
    ls = osub.add_parser("list", help="list messages (the dead-letter list by default)")
    ls.add_argument("--status", default="dead", choices=["dead", "pending", "delivering", "delivered", "all"])
    ls.add_argument("--target", help="case system name")
    ls.add_argument("--limit", type=int, default=100)
    rp = osub.add_parser("replay", help="put dead messages back in the queue (same idempotency keys)")
    rp.add_argument("ids", nargs="*", type=int)
    rp.add_argument("--all-dead", action="store_true")
    rp.add_argument("--target", help="only this case system's messages")
    ob.set_defaults(func=partial(cmd_outbox, database=database))

    cap = subparsers.add_parser("cap", help="CAP 1.2 emergency warnings (应急预警)")
    csub = cap.add_subparsers(dest="action", required=True)
    imp = csub.add_parser("import", help="import a CAP alert: a case and a broadcast to the area's villages")
    imp.add_argument("file")
    imp.add_argument("--allow-non-actual", action="store_true",
                     help="act on Exercise/Test/System/Draft alerts too (broadcasts for real)")
    cap.set_defaults(func=partial(cmd_cap, database=database))
