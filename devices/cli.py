"""``xlhub devices credentials issue|rotate DEVICE_ID``: one broker account per device
(一机一帐号).  Registered by hub/cli.py, which passes what this layer may not import: the
database context and the embedded broker (so devices/ stays below hub/)."""
from __future__ import annotations

import getpass
import sys
from collections.abc import Callable

from devices.credentials import CredentialsError, DeviceSecrets, broker_accounts, signal_broker_reload


def register(sub, database: Callable, broker_factory: Callable, account_factory: Callable) -> None:
    """``broker_factory(settings)`` → an EmbeddedMosquitto for the hub's var dir and port;
    ``account_factory(kind, id, password)`` → its account (hub.embedded.device_account)."""
    dev = sub.add_parser("devices", help="field devices")
    dsub = dev.add_subparsers(dest="devices_command", required=True)
    cred = dsub.add_parser("credentials", help="issue or rotate a device's broker password (shown once)")
    cred.add_argument("action", choices=["issue", "rotate"])
    cred.add_argument("device_id")
    cred.add_argument("--signing-key", action="store_true",
                      help="rotate: also replace the command-signing key (doors must get the new one)")

    def run(args, settings) -> int:
        return credentials_command(args, settings, database, broker_factory, account_factory)

    cred.set_defaults(func=run)


def credentials_command(args, settings, database, broker_factory, account_factory) -> int:
    from store import audit
    from store.db import connect

    store = DeviceSecrets.for_settings(settings)
    with database(settings) as url, connect(url) as conn:
        kinds = {r["id"]: r["kind"] for r in conn.execute("SELECT id, kind FROM devices WHERE active").fetchall()}
        if args.device_id not in kinds:
            print(f"xlhub: no active device {args.device_id!r} in the registry", file=sys.stderr)
            return 1
        try:
            issued = store.issue(args.device_id, rotate=args.action == "rotate",
                                 signing_key=args.action == "issue" or args.signing_key)
        except CredentialsError as exc:
            print(f"xlhub: {exc}", file=sys.stderr)
            return 1
        where = reload_broker(settings, store, kinds, broker_factory, account_factory)
        audit.record(conn, audit.AuditEntry(
            actor=getpass.getuser(), actor_kind="system", action=f"cli.devices.credentials.{args.action}",
            target=args.device_id, outcome="ok",
            detail={"signing_key_changed": issued.signing_key is not None, "broker": where}))
    print(f"device {args.device_id}: broker password {'issued' if args.action == 'issue' else 'rotated'} ({where})")
    print(f"username: {args.device_id}")
    print(f"password (shown once): {issued.password}")
    if issued.signing_key:
        print(f"command-signing key (shown once): {issued.signing_key}")
    return 0


def reload_broker(settings, store: DeviceSecrets, kinds: dict[str, str], broker_factory, account_factory) -> str:
    """Rewrite the embedded broker's password file and ACL and make the running broker
    re-read them; with an external broker, say what the operator must do."""
    if settings.mqtt_url:
        return "external broker: set this password on it yourself"
    broker = broker_factory(settings)
    broker.set_accounts([account_factory(kind, dev, pw) for kind, dev, pw in broker_accounts(store, kinds)])
    conf = broker.write_config()
    pid = signal_broker_reload(conf)
    return f"embedded broker reloaded (pid {pid})" if pid else "embedded broker not running: applies at next start"
