"""`xlhub`: the hub's one command.

    xlhub run                      start the hub (embedded servers unless configured)
    xlhub check-config FILE        report every problem in a site file
    xlhub migrate                  apply the schema
    xlhub site export|import       the live registry as a site file; a site file applied (with a diff)
    xlhub user add|list|passwd     manage accounts (一人一密码)
    xlhub user disable|enable|reset-password NAME   停用/启用 an account, an administrator's reset
    xlhub token add|revoke         API tokens for machine clients
    xlhub audit verify             verify the audit log's hash chain
    xlhub cameras discover         find ONVIF cameras on the local network (WS-Discovery)
    xlhub recordings verify        verify the recordings' hash chain and files (录像防篡改)
    xlhub outbox list|replay       deliveries to case systems: dead letters and replay
    xlhub cap import FILE          import a CAP 1.2 emergency warning
    xlhub devices credentials issue|rotate ID   a device's broker password (一机一帐号), shown once
    xlhub gb28181 devices|admit ID   GB/T 28181 devices; admit one (its SIP password, shown once)
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from config.settings import Settings

log = logging.getLogger("xlhub")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL to work on; in embedded mode, the private cluster — started for
    the duration of the command when the hub is not running."""
    from hub.embedded import EmbeddedPostgres
    from store import migrate
    from store.db import wait_for_database
    from store.secrets import SecretBox

    if settings.database_url:
        yield settings.database_url
        return
    pg = EmbeddedPostgres(settings.var_dir, settings.embedded_pg_port, box=SecretBox.from_settings(settings))
    started = False
    try:
        wait_for_database(pg.url, timeout=1)
    except TimeoutError:
        pg.start()
        started = True
    try:
        migrate.upgrade(pg.url)
        yield pg.url
    finally:
        if started:
            pg.stop()


def cmd_run(args, settings: Settings) -> int:
    from config.site import SiteError
    from hub.embedded import EmbeddedError
    from hub.supervisor import Supervisor, describe_targets
    from store.certs import CertError
    from store.files import UMASK

    # Everything the hub and its servers write under var/ (evidence, secrets, the database,
    # the broker's store, logs) is the hub's account's alone; the service users' own
    # directories are handed to them (hub/embedded.service_dir).
    os.umask(UMASK)
    if args.site:
        settings.site_file = Path(args.site)
    if args.no_demo:
        settings.demo = False
    log.info("starting hub: site %s; %s", settings.site_file, describe_targets(settings))
    try:
        return Supervisor(settings).run()
    except SiteError as exc:
        print(f"xlhub: refusing to start, the site file has problems:\n{exc}", file=sys.stderr)
        return 2
    except (EmbeddedError, CertError, TimeoutError) as exc:
        print(f"xlhub: {exc}", file=sys.stderr)
        return 1


def cmd_check_config(args, settings: Settings) -> int:
    from config.site import check_site_file

    site, problems = check_site_file(Path(args.file))
    if site is not None:
        # the vendor dialects' samples, run through the translator the bridge uses
        from devices.dialects.mapped import check_samples

        problems = [*problems, *(f"{args.file}: {p}" for name, model in site.dialects.items()
                                 for p in check_samples(name, model))]
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.file}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK — {sum(1 for _ in site.nodes())} grid nodes, {len(site.cameras)} cameras, "
          f"{len(site.devices)} devices, {len(site.users)} users")
    return 0


def cmd_migrate(args, settings: Settings) -> int:
    from store import migrate

    with database(settings) as url:
        print(f"schema at revision {migrate.current_revision(url)} (head {migrate.head_revision()})")
    return 0


def _read_password(args) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        first = getpass.getpass("password (empty: generate one): ")
        if first and getpass.getpass("again: ") != first:
            raise SystemExit("xlhub: passwords differ")
        return first or None
    return None


def cmd_user(args, settings: Settings) -> int:
    from store import audit, identity
    from store.db import connect

    with database(settings) as url, connect(url) as conn:
        if args.action == "list":
            for r in conn.execute("SELECT username, display_name, role, node_code, active FROM users ORDER BY node_code, username"):
                print(f"{r['username']:<20} {r['role']:<20} {r['node_code']:<14} {'' if r['active'] else '(inactive) '}{r['display_name']}")
            return 0
        if args.action in ("disable", "enable"):
            return _user_active(conn, args.username, args.action == "enable")
        if args.action == "reset-password":
            return _user_reset(conn, args)
        password = _read_password(args)
        generated = None
        if password is None:
            password = generated = identity.generate_password()
        try:
            if args.action == "add":
                identity.create_user(conn, username=args.username, display_name=args.name or args.username,
                                     role=args.role, node_code=args.node, department_code=args.department,
                                     password=password, origin="cli", must_change_password=generated is not None)
            else:
                identity.set_password(conn, args.username, password, must_change=generated is not None)
                # Set by someone else than the person: whoever had the old password is out.
                identity.end_all_sessions(conn, identity.user_for_update(conn, args.username)["id"])
        except identity.IdentityError as exc:
            print(f"xlhub: {exc}", file=sys.stderr)
            return 1
        audit.record(conn, audit.AuditEntry(actor=getpass.getuser(), actor_kind="system", action=f"cli.user.{args.action}",
                                            target=args.username, outcome="ok"))
    print(f"user {args.username}: {'created' if args.action == 'add' else 'password set, its sessions ended'}")
    if generated:
        print(f"initial password (shown once): {generated}")
    return 0


def _cli_audit(conn, action: str, target: str, detail: dict | None = None) -> None:
    from store import audit

    audit.record(conn, audit.AuditEntry(actor=getpass.getuser(), actor_kind="system", action=action, target=target,
                                        outcome="ok", detail=detail))


def _user_active(conn, username: str, active: bool) -> int:
    """停用/启用: disabling ends every session of the account at once (as the API does)."""
    from store import identity

    try:
        changed = identity.set_active(conn, username, active)
    except identity.IdentityError as exc:
        print(f"xlhub: {exc}", file=sys.stderr)
        return 1
    if changed:
        _cli_audit(conn, "cli.user.enable" if active else "cli.user.disable", username,
                   {"before": {"active": not active}, "after": {"active": active}})
    state = "enabled" if active else "disabled, its sessions ended"
    print(f"user {username}: {state}" if changed else f"user {username}: already {'enabled' if active else 'disabled'}")
    return 0


def _user_reset(conn, args) -> int:
    """An administrator's reset: must be changed at the next login, every session ends."""
    from store import identity

    try:
        generated = identity.reset_password(conn, args.username, _read_password(args))
    except identity.IdentityError as exc:
        print(f"xlhub: {exc}", file=sys.stderr)
        return 1
    _cli_audit(conn, "cli.user.password_reset", args.username, {"generated": generated is not None})
    print(f"user {args.username}: password reset, its sessions ended; it must be changed at the next login")
    if generated:
        print(f"new password (shown once): {generated}")
    return 0


def cmd_token(args, settings: Settings) -> int:
    from store import audit, identity
    from store.db import connect

    with database(settings) as url, connect(url) as conn:
        try:
            if args.action == "add":
                token = identity.create_api_token(conn, name=args.name, role=args.role, node_code=args.node,
                                                  created_by=getpass.getuser(), days=args.days)
            else:
                identity.revoke_api_token(conn, args.name)
                token = None
        except identity.IdentityError as exc:
            print(f"xlhub: {exc}", file=sys.stderr)
            return 1
        audit.record(conn, audit.AuditEntry(actor=getpass.getuser(), actor_kind="system",
                                            action=f"cli.token.{args.action}", target=args.name, outcome="ok"))
    if token:
        print(f"API token {args.name} (shown once): {token}")
    else:
        print(f"API token {args.name} revoked")
    return 0


def cmd_audit(args, settings: Settings) -> int:
    from store import audit
    from store.db import connect

    with database(settings) as url, connect(url) as conn:
        report = audit.verify(conn)
    if report.ok:
        print(f"audit chain OK: {report.records} records verified")
        return 0
    print(f"audit chain BROKEN at record {report.broken_at}: {report.reason} "
          f"({report.records} records read)", file=sys.stderr)
    return 1


def cmd_cameras(args, settings: Settings) -> int:
    from cameras.onvif.discovery import discover_cli

    return discover_cli(args.timeout)


def build_parser() -> argparse.ArgumentParser:
    from config.vocabulary import Role

    p = argparse.ArgumentParser(prog="xlhub", description="Xueliang Hub (雪亮 hub)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the hub")
    run.add_argument("--site", help="site file (default: XLHUB_SITE_FILE or the built-in demo site)")
    run.add_argument("--no-demo", action="store_true", help="do not start the demo simulators")
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="report every problem in a site file")
    chk.add_argument("file")
    chk.set_defaults(func=cmd_check_config)

    mig = sub.add_parser("migrate", help="apply the database schema")
    mig.set_defaults(func=cmd_migrate)

    user = sub.add_parser("user", help="user accounts")
    usub = user.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", help="create an account")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--node", required=True, help="grid node code the account is scoped to")
    add.add_argument("--name", help="display name")
    add.add_argument("--department", help="department code (department handlers)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    passwd = usub.add_parser("passwd", help="set a password (ends the account's sessions)")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    usub.add_parser("list", help="list accounts")
    for action, text in (("disable", "停用: refuse its logins and end its sessions"), ("enable", "启用 again")):
        usub.add_parser(action, help=text).add_argument("username")
    reset = usub.add_parser("reset-password", help="an administrator's reset: must be changed at the next login, "
                                                   "ends its sessions")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from standard input "
                                                                     "(default: generate one)")
    user.set_defaults(func=cmd_user)

    token = sub.add_parser("token", help="API tokens for machine clients")
    tsub = token.add_subparsers(dest="action", required=True)
    tadd = tsub.add_parser("add")
    tadd.add_argument("name")
    tadd.add_argument("--role", required=True, choices=[r.value for r in Role])
    tadd.add_argument("--node", required=True)
    tadd.add_argument("--days", type=int)
    trev = tsub.add_parser("revoke")
    trev.add_argument("name")
    token.set_defaults(func=cmd_token)

    aud = sub.add_parser("audit", help="audit log")
    asub = aud.add_subparsers(dest="action", required=True)
    asub.add_parser("verify", help="verify the hash chain")
    aud.set_defaults(func=cmd_audit)

    cams = sub.add_parser("cameras", help="cameras")
    csub = cams.add_subparsers(dest="action", required=True)
    disc = csub.add_parser("discover", help="WS-Discovery probe for ONVIF cameras, with progress")
    disc.add_argument("--timeout", type=float, default=5.0, help="seconds to listen for answers")
    cams.set_defaults(func=cmd_cameras)

    from cameras.recording.cli import register as register_recordings   # recordings verify
    register_recordings(sub, database)

    from hub.site_cli import register as register_site   # site export|import
    register_site(sub, database)

    from cameras.gb28181.cli import register as register_gb28181   # gb28181 devices|admit
    register_gb28181(sub, database)

    from alerts.cli import register as register_alerts   # outbox list|replay, cap import
    register_alerts(sub, database)

    from devices.cli import register as register_devices   # devices credentials issue|rotate
    from hub.embedded import EmbeddedMosquitto, device_account
    from store.secrets import SecretBox

    def broker_factory(s: Settings) -> EmbeddedMosquitto:
        # The same listeners as the running hub's broker: the config is rewritten whole.
        return EmbeddedMosquitto.from_settings(s, SecretBox.from_settings(s))

    register_devices(sub, database, broker_factory=broker_factory, account_factory=device_account)
    return p


def main(argv: list[str] | None = None) -> None:
    from store.secrets import SecretError

    args = build_parser().parse_args(argv)
    settings = Settings()
    from hub.logs import setup_logging
    setup_logging(settings, process="main")
    try:
        code = args.func(args, settings)
    except SecretError as exc:
        # Names the file and the likely cause (XLHUB_SECRET_KEY), never a value.
        print(f"xlhub: cannot read the hub's secrets: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
