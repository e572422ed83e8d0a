"""`xlhub site export [FILE]` and `xlhub site import FILE [--yes]`: the live registry as a
site file, and a site file applied to the live registry after showing what it changes.

The registry is the live truth (docs/architecture.md, "Site file and UI"); a file exported
passes `xlhub check-config` and imports back to no difference. What the registry does not
hold (credentials, case systems, CAP feeds, dialects)
is carried over from the hub's configured site file (XLHUB_SITE_FILE).
"""
from __future__ import annotations

import getpass
import sys
from pathlib import Path

import yaml

from config.settings import Settings

HEADER = """# Site file exported from the live registry by `xlhub site export` ({when}).
# Check it with `xlhub check-config FILE`; apply it with `xlhub site import FILE`.
"""


def _base(settings: Settings) -> dict:
    from config.site.loader import read_site_document

    path = Path(settings.site_file)
    if not path.is_file():
        return {}
    data, _root, _ = read_site_document(path)
    return data if isinstance(data, dict) else {}


def dump(doc: dict) -> str:
    from datetime import UTC, datetime

    return HEADER.format(when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")) + yaml.safe_dump(
        doc, allow_unicode=True, sort_keys=False, width=120)


def cmd_site(args, settings: Settings, database) -> int:
    from config.site import check_site_file, check_site_data
    from config.site.loader import read_site_document
    from store import audit, sitedoc
    from store.db import connect

    with database(settings) as url, connect(url) as conn:
        if args.action == "export":
            text = dump(sitedoc.registry_document(conn, _base(settings)))
            if args.file in (None, "-"):
                sys.stdout.write(text)
            else:
                Path(args.file).write_text(text, encoding="utf-8")
                print(f"registry exported to {args.file}", file=sys.stderr)
            return 0

        new, problems = check_site_file(args.file)
        if new is None:
            for p in problems:
                print(p)
            print(f"{len(problems)} problem(s) in {args.file}: nothing imported", file=sys.stderr)
            return 1
        data, _root, _ = read_site_document(args.file)
        current, current_problems = check_site_data(sitedoc.registry_document(conn, _base(settings)), "<registry>")
        if current is None:
            print("the live registry has problems as a site file (shown below); the diff is against an empty site",
                  file=sys.stderr)
            for p in current_problems:
                print(f"  {p}", file=sys.stderr)
            changes = [sitedoc.Change(k, key, "added") for k, items in sitedoc.entities(new).items() for key in items]
        else:
            changes = sitedoc.diff(current, new)
        if not changes:
            print(f"{args.file}: no differences from the live registry")
            return 0
        for c in changes:
            print(c)
        counts = {op: sum(1 for c in changes if c.op == op) for op in ("added", "changed", "retired")}
        print(f"{counts['added']} added, {counts['changed']} changed, {counts['retired']} retired")
        if not args.yes:
            if not sys.stdin.isatty():
                print("not applied: confirm with --yes", file=sys.stderr)
                return 2
            if input("apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
                print("not applied")
                return 2
        who = getpass.getuser()
        configured = Path(settings.site_file).resolve() == Path(args.file).resolve()
        report = sitedoc.apply_site(conn, new, data, file=args.file, by=f"cli:{who}", record=configured)
        audit.record(conn, audit.AuditEntry(
            actor=who, actor_kind="system", action="cli.site.import", target=str(args.file), outcome="ok",
            detail={"sha256": sitedoc.file_hash(args.file), "changes": [
                {"kind": c.kind, "key": c.key, "op": c.op, "before": c.before, "after": c.after} for c in changes]}))
        print(f"applied: {len(changes)} change(s)"
              + (f"; devices decommissioned: {', '.join(report.deactivated)}" if report.deactivated else ""))
        for username, password in report.created_users:
            if password:
                print(f"created user {username} with initial password (shown once): {password}")
    return 0


def register(sub, database) -> None:
    site = sub.add_parser("site", help="the live registry as a site file: export, import")
    ssub = site.add_subparsers(dest="action", required=True)
    exp = ssub.add_parser("export", help="write the live registry as a site file (stdout without FILE)")
    exp.add_argument("file", nargs="?")
    imp = ssub.add_parser("import", help="show what a site file changes in the live registry and apply it")
    imp.add_argument("file")
    imp.add_argument("--yes", action="store_true", help="apply without asking")
    site.set_defaults(func=lambda args, settings: cmd_site(args, settings, database))
