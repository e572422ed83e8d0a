"""``xlhub devices credentials issue|rotate|revoke DEVICE_ID``: one broker account per
device (一机一帐号), and what an installer needs to connect it (a bundle: host, ports, CA
certificate, username, password or client certificate and key, client id, topics).  Registered by hub/cli.py, which passes what this layer may not import: the
database context and the embedded broker (so devices/ stays below hub/)."""
from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from devices.credentials import CredentialsError, DeviceSecrets, broker_accounts, signal_broker_reload
from store.certs import HubPki


def register(sub, database: Callable, broker_factory: Callable, account_factory: Callable) -> None:
    """``broker_factory(settings)`` → an EmbeddedMosquitto for the hub's var dir and port;
    ``account_factory(kind, id, password)`` → its account (hub.embedded.device_account)."""
    dev = sub.add_parser("devices", help="field devices")
    dsub = dev.add_subparsers(dest="devices_command", required=True)
    cred = dsub.add_parser("credentials", help="issue, rotate or revoke a device's broker credentials "
                                               "(secrets shown once)")
    cred.add_argument("action", choices=["issue", "rotate", "revoke"])
    cred.add_argument("device_id")
    cred.add_argument("--signing-key", action="store_true",
                      help="rotate: also replace the command-signing key (doors must get the new one)")
    cred.add_argument("--client-cert", action="store_true",
                      help="issue/rotate: also a client certificate (mutual TLS, 一机一证); rotate revokes the old one")
    cred.add_argument("--bundle", metavar="DIR",
                      help="write the installer's bundle into DIR (device.json, ca.crt, client.crt/.key), 0600")
    cred.add_argument("--host", help="the address devices dial (default: the first TLS server name)")
    cred.add_argument("--json", action="store_true", help="print the whole bundle as JSON (secrets included)")

    def run(args, settings) -> int:
        return credentials_command(args, settings, database, broker_factory, account_factory)

    cred.set_defaults(func=run)


def credentials_command(args, settings, database, broker_factory, account_factory) -> int:
    from store import audit
    from store.db import connect

    store = DeviceSecrets.for_settings(settings)
    if args.action == "revoke":
        return revoke_command(args, settings, database, broker_factory, account_factory)
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
        pki = HubPki.from_settings(settings, store.box)
        client = None
        if args.client_cert:
            old = pki.client_serials(args.device_id, revoked=False)
            client = pki.issue_client(args.device_id)
            if args.action == "rotate" and old:
                pki.revoke_client_serials(old)
        where = reload_broker(settings, store, kinds, broker_factory, account_factory)
        audit.record(conn, audit.AuditEntry(
            actor=getpass.getuser(), actor_kind="system", action=f"cli.devices.credentials.{args.action}",
            target=args.device_id, outcome="ok",
            detail={"signing_key_changed": issued.signing_key is not None, "broker": where,
                    "client_cert_serial": str(client.serial) if client else None}))
    bundle = installer_bundle(settings, pki, args.device_id, kinds[args.device_id], issued, client, args.host)
    # with --json, stdout is the bundle alone
    print(f"device {args.device_id}: broker credentials {'issued' if args.action == 'issue' else 'rotated'} "
          f"({where})", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(bundle, ensure_ascii=False, indent=2))
        return 0
    mqtt = bundle["mqtt"]
    print(f"host: {bundle['host']}  MQTT over TLS: {mqtt['tls_port'] or 'off'}  "
          f"with client certificate: {mqtt['client_cert_port'] or 'off'}")
    print(f"client id and username: {args.device_id}")
    print(f"password (shown once): {issued.password}")
    if issued.signing_key:
        print(f"command-signing key (shown once): {issued.signing_key}")
    print(f"topics: publish {', '.join(bundle['topics']['publish'])}; subscribe {bundle['topics']['subscribe'][0]}")
    if args.bundle:
        paths = write_bundle(Path(args.bundle), bundle)
        print(f"bundle written (secrets inside, 0600): {', '.join(str(p) for p in paths)}")
    else:
        print(f"CA certificate: {pki.ca_path}" + ("; client certificate and key: use --bundle DIR or --json"
                                                  if client else ""))
    return 0


def installer_bundle(settings, pki, device_id: str, kind: str, issued, client, host: str | None) -> dict:
    """Everything an installer types into a device (docs/devices-install.md)."""

    host = host or pki.server_names[0]
    root = f"xlhub/v1/{kind}/{device_id}"
    bundle = {
        "device_id": device_id, "kind": kind, "host": host,
        "mqtt": {
            "tls_port": settings.embedded_mqtt_device_tls_port or None,
            "client_cert_port": settings.embedded_mqtt_device_mtls_port or None,
            "protocol": "MQTT 5 (3.1.1 accepted)", "tls": "TLS 1.2 or newer; verify the server against ca_pem",
            "client_id": device_id, "username": device_id,
            "password": issued.password,
        },
        "topics": {"publish": [f"{root}/avail", f"{root}/state", f"{root}/tele", f"{root}/evt/<type>",
                               f"{root}/res"], "subscribe": [f"{root}/cmd/#"]},
        "http": {"base_url": settings.base_url, "auth": "HTTP Basic: username = device id, password as above"},
        "ca_pem": pki.server_ca_pem(),
    }
    if issued.signing_key:
        bundle["command_signing_key"] = issued.signing_key
    if client is not None:
        bundle["client_cert"] = {"port": settings.embedded_mqtt_device_mtls_port, "cert_pem": client.cert_pem,
                                 "key_pem": client.key_pem, "serial": str(client.serial),
                                 "not_after": client.not_after.isoformat(),
                                 "note": "on the client-certificate port the certificate is the login: "
                                         "no username or password"}
    return bundle


def write_bundle(directory: Path, bundle: dict) -> list[Path]:
    from store.files import private_dir

    directory = private_dir(directory)
    written = []

    def put(name: str, text: str) -> None:
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        written.append(path)

    put("ca.crt", bundle["ca_pem"])
    if "client_cert" in bundle:
        put("client.crt", bundle["client_cert"]["cert_pem"])
        put("client.key", bundle["client_cert"]["key_pem"])
    put("device.json", json.dumps(bundle, ensure_ascii=False, indent=2))
    return written


def revoke_command(args, settings, database, broker_factory, account_factory) -> int:
    """Revoke a device's password and every client certificate at once: the running hub
    reloads its broker (password: the connection is dropped and refused; certificates: the
    CRL refuses the next handshake and the supervisor drops the live connection)."""
    from store import audit
    from store.db import connect

    store = DeviceSecrets.for_settings(settings)
    pki = HubPki.from_settings(settings, store.box)
    had_password = store.revoke(args.device_id)
    serials = pki.revoke_client(args.device_id)
    if not had_password and not serials:
        print(f"xlhub: device {args.device_id!r} has no credentials to revoke", file=sys.stderr)
        return 1
    with database(settings) as url, connect(url) as conn:
        kinds = {r["id"]: r["kind"] for r in conn.execute("SELECT id, kind FROM devices WHERE active").fetchall()}
        where = reload_broker(settings, store, kinds, broker_factory, account_factory)
        audit.record(conn, audit.AuditEntry(
            actor=getpass.getuser(), actor_kind="system", action="cli.devices.credentials.revoke",
            target=args.device_id, outcome="ok",
            detail={"password": had_password, "client_cert_serials": [str(s) for s in serials], "broker": where}))
    print(f"device {args.device_id}: credentials revoked (password: {'yes' if had_password else 'none'}, "
          f"client certificates: {len(serials)}; {where})")
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
