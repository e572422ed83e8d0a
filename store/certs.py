"""The hub's certificates: one home for the CA the hub generates, the server certificate
the broker's TLS listeners and the API serve, and the client certificates of devices that
log in with one (一机一证).

    pki = HubPki(var_dir, box, server_names=["hub.county.example", "10.1.2.3"])
    files = pki.server_files(out_dir)              # cert chain + plain key for a server, 0600
    bundle = pki.issue_client("door-001")          # cert + key PEM for one device
    pki.revoke_client("door-001"); pki.write_crl(path)

Where things are:

- ``var/tls/ca.crt`` (public) and the CA's private key in ``var/secrets/tls_ca_key``,
  encrypted under the hub's master key like every other secret (store/secrets.py);
- ``var/tls/server.crt`` and its key in ``var/secrets/tls_server_key`` (encrypted): a server
  needs the key in clear, so ``server_files`` writes a 0600 copy into the directory of the
  process that serves it (the broker's own, the API's run dir) at every start;
- ``var/tls/clients.json``: which serial number was issued to which device, when, and
  whether it is revoked (public data: the CRL says the same). Revoked serials go into the
  CRL (``write_crl``) that the broker checks on every handshake.

An operator-supplied certificate (``XLHUB_TLS_CERT_FILE`` / ``XLHUB_TLS_KEY_FILE``, PEM, the
chain in the certificate file) replaces the generated server certificate; device client
certificates are still issued by the hub's own CA, which the broker trusts for them.

The generated server certificate carries the configured subject names (DNS names and IP
addresses, ``XLHUB_TLS_SERVER_NAMES``) and is re-issued when they change or when it has
less than 30 days left. Lives in store/ because it is shared ground next to the secrets it
encrypts its keys with: the supervisor (hub/) writes the broker's and the API's files,
``xlhub devices credentials issue`` (devices/) issues client certificates, and nothing of
it knows about MQTT or HTTP."""
from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from store.files import private_dir
from store.secrets import SecretBox, _write_atomic, exclusive, read_secret, write_secret

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 825
RENEW_BEFORE = timedelta(days=30)
ORG = "Xueliang Hub"


class CertError(RuntimeError):
    """A certificate or key that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ServerFiles:
    cert: Path          # the server certificate (and its chain)
    key: Path           # its private key, in clear, 0600
    ca: Path            # the CA devices and browsers trust for it


@dataclass(frozen=True)
class ClientBundle:
    device_id: str
    serial: int
    cert_pem: str
    key_pem: str
    not_after: datetime


def default_server_names() -> list[str]:
    """This machine's name, localhost and the loopback address."""
    names = [socket.gethostname(), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _now() -> datetime:
    return datetime.now(UTC)


class HubPki:
    def __init__(self, var_dir: Path, box: SecretBox, *, server_names: list[str] | None = None,
                 cert_file: Path | None = None, key_file: Path | None = None) -> None:
        self.var_dir = Path(var_dir)
        self.box = box
        self.server_names = list(dict.fromkeys(server_names or default_server_names()))
        self.cert_file = Path(cert_file) if cert_file else None
        self.key_file = Path(key_file) if key_file else None
        if bool(self.cert_file) != bool(self.key_file):
            raise CertError("XLHUB_TLS_CERT_FILE and XLHUB_TLS_KEY_FILE go together: set both or neither")

    @classmethod
    def from_settings(cls, settings, box: SecretBox | None = None) -> HubPki:
        return cls(settings.var_dir, box or SecretBox.from_settings(settings),
                   server_names=settings.tls_server_names or None,
                   cert_file=settings.tls_cert_file, key_file=settings.tls_key_file)

    # -- paths -----------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return private_dir(self.var_dir / "tls")

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def _ca_key_secret(self) -> Path:
        return self.var_dir / "secrets" / "tls_ca_key"

    @property
    def _server_key_secret(self) -> Path:
        return self.var_dir / "secrets" / "tls_server_key"

    @property
    def clients_path(self) -> Path:
        return self.dir / "clients.json"

    def _lock(self):
        return exclusive(self.dir / ".pki.lock")

    # -- the CA ----------------------------------------------------------------------
    def ensure_ca(self) -> x509.Certificate:
        """The hub's CA, generated on first use (its key encrypted in var/secrets)."""
        with self._lock():
            if self.ca_path.exists() and self._ca_key_secret.exists():
                return self.ca_cert()
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                              x509.NameAttribute(NameOID.COMMON_NAME, f"{ORG} CA {socket.gethostname()}")])
            now = _now()
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CA_DAYS))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                 key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                 decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            write_secret(self._ca_key_secret, _key_pem(key), self.box)
            _write_atomic(self.ca_path, cert.public_bytes(serialization.Encoding.PEM).decode())
            return cert

    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_path.read_bytes())

    def ca_pem(self) -> str:
        self.ensure_ca()
        return self.ca_path.read_text()

    def _ca_key(self):
        return serialization.load_pem_private_key(read_secret(self._ca_key_secret, self.box).encode(), None)

    def _sign(self, subject: x509.Name, public_key, *, days: int, usage, san: list[str] | None = None,
              not_before: datetime | None = None, not_after: datetime | None = None) -> x509.Certificate:
        ca = self.ensure_ca()
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - timedelta(minutes=5))
                   .not_valid_after(not_after or now + timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False))
        if san:
            builder = builder.add_extension(_san(san), critical=False)
        return builder.sign(self._ca_key(), hashes.SHA256())

    # -- the server certificate ------------------------------------------------------
    @property
    def server_cert_path(self) -> Path:
        return self.dir / "server.crt"

    def ensure_server(self) -> tuple[str, str]:
        """(certificate chain PEM, key PEM) the servers present: the operator's when given,
        else the generated one, re-issued when its names changed or it is about to expire."""
        if self.cert_file:
            return self._supplied()
        ca = self.ensure_ca()
        current = self._current_server(ca)
        if current is not None:
            return current
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                             x509.NameAttribute(NameOID.COMMON_NAME, self.server_names[0])])
        cert = self._sign(subject, key.public_key(), days=SERVER_DAYS, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                          san=self.server_names)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        with self._lock():
            write_secret(self._server_key_secret, _key_pem(key), self.box)
            _write_atomic(self.server_cert_path, pem)
        return pem, _key_pem(key)

    def _current_server(self, ca: x509.Certificate) -> tuple[str, str] | None:
        if not self.server_cert_path.exists() or not self._server_key_secret.exists():
            return None
        pem = self.server_cert_path.read_text()
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        if names != _san(self.server_names) or cert.not_valid_after_utc - _now() < RENEW_BEFORE:
            return None
        if cert.issuer != ca.subject:
            return None
        return pem, read_secret(self._server_key_secret, self.box)

    def _supplied(self) -> tuple[str, str]:
        try:
            pem = self.cert_file.read_text()
            key_pem = self.key_file.read_text()
        except OSError as exc:
            raise CertError(f"cannot read the supplied certificate or key: {exc}") from None
        try:
            certs = x509.load_pem_x509_certificates(pem.encode())
        except ValueError:
            raise CertError(f"{self.cert_file}: not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), None)
        except (ValueError, TypeError) as exc:
            raise CertError(f"{self.key_file}: not an unencrypted PEM private key ({exc})") from None
        if certs[0].public_key().public_numbers() != key.public_key().public_numbers():
            raise CertError(f"{self.key_file} is not the key of {self.cert_file}")
        if certs[0].not_valid_after_utc < _now():
            raise CertError(f"{self.cert_file} expired at {certs[0].not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        return pem, key_pem

    def server_ca_pem(self) -> str:
        """What a client must trust to verify the server: the hub's CA, or with a supplied
        certificate the last certificate of its chain (its issuer's, when the file has one)."""
        if not self.cert_file:
            return self.ca_pem()
        certs = x509.load_pem_x509_certificates(self.cert_file.read_bytes())
        return certs[-1].public_bytes(serialization.Encoding.PEM).decode()

    def server_files(self, out_dir: Path, *, owner: tuple[int, int] | None = None) -> ServerFiles:
        """Write the server certificate, its key (clear, 0600) and the CA into ``out_dir``
        (a directory only the serving process's user can enter)."""
        import os

        pem, key_pem = self.ensure_server()
        out_dir = private_dir(Path(out_dir))
        files = ServerFiles(out_dir / "server.crt", out_dir / "server.key", out_dir / "ca.crt")
        if not self.cert_file:
            pem = pem + self.ca_pem()       # the whole chain: a client can pin the CA's key
        # the broker verifies device certificates against the hub's own CA, whoever signed the server's
        for path, text in ((files.cert, pem), (files.key, key_pem), (files.ca, self.ca_pem())):
            _write_atomic(path, text)
            if owner:
                os.chown(path, *owner)
        return files

    # -- device certificates ---------------------------------------------------------
    def _clients(self) -> dict:
        if not self.clients_path.exists():
            return {}
        return json.loads(self.clients_path.read_text() or "{}")

    def _save_clients(self, data: dict) -> None:
        _write_atomic(self.clients_path, json.dumps(data, sort_keys=True, indent=1))

    def issue_client(self, device_id: str, *, days: int = CLIENT_DAYS, not_before: datetime | None = None,
                     not_after: datetime | None = None) -> ClientBundle:
        """A client certificate for one device (CN = the device id = its broker account).
        Earlier certificates of the device stay valid until revoked: replace, then revoke."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                             x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        cert = self._sign(subject, key.public_key(), days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                          not_before=not_before, not_after=not_after)
        with self._lock():
            data = self._clients()
            data[str(cert.serial_number)] = {"device": device_id, "issued": _now().isoformat(),
                                             "not_after": cert.not_valid_after_utc.isoformat(), "revoked": None}
            self._save_clients(data)
        return ClientBundle(device_id, cert.serial_number, cert.public_bytes(serialization.Encoding.PEM).decode(),
                            _key_pem(key), cert.not_valid_after_utc)

    def client_serials(self, device_id: str, *, revoked: bool | None = None) -> list[int]:
        return [int(s) for s, r in self._clients().items() if r["device"] == device_id
                and (revoked is None or bool(r["revoked"]) == revoked)]

    def revoke_client(self, device_id: str) -> list[int]:
        """Revoke every certificate of a device; returns the serials newly revoked."""
        with self._lock():
            data = self._clients()
            newly = [int(s) for s, r in data.items() if r["device"] == device_id and not r["revoked"]]
            for s in newly:
                data[str(s)]["revoked"] = _now().isoformat()
            if newly:
                self._save_clients(data)
        return newly

    def revoke_client_serials(self, serials: list[int]) -> None:
        with self._lock():
            data = self._clients()
            for s in serials:
                if str(s) in data and not data[str(s)]["revoked"]:
                    data[str(s)]["revoked"] = _now().isoformat()
            self._save_clients(data)

    def revoked_devices(self, serials: set[int]) -> list[str]:
        data = self._clients()
        return sorted({data[str(s)]["device"] for s in serials if str(s) in data})

    def revoked_serials(self) -> dict[int, datetime]:
        return {int(s): datetime.fromisoformat(r["revoked"]) for s, r in self._clients().items() if r["revoked"]}

    def crl_pem(self) -> str:
        """The CA's certificate revocation list (always one, even empty: a broker that checks
        revocation refuses every client whose CA has none)."""
        ca = self.ensure_ca()
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
                   .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=365)))
        for serial, when in sorted(self.revoked_serials().items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
        return builder.sign(self._ca_key(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    def write_crl(self, path: Path, *, owner: tuple[int, int] | None = None) -> Path:
        import os

        _write_atomic(Path(path), self.crl_pem())
        if owner:
            os.chown(path, *owner)
        return Path(path)
