"""CAP documents written the way their publishers write them, and a small feed server.

- ``OASIS_THUNDERSTORM``: the OASIS CAP 1.2 specification's example "Severe Thunderstorm
  Warning" (Appendix A.2, cap_samples/): an American area, so this site must refuse it, with a reason.
- ``national``: a warning in the style of China's national early-warning release system
  (国家突发事件预警信息发布系统; GB/T 35965 profile of CAP 1.2): zh-CN info, the 12379-style
  identifier, senderName of the issuing 气象台, a 行政区划代码 geocode.
- ``sign``: an enveloped XML-DSig signature (CAP 1.2 §3.3.2.1) made with signxml over a
  certificate made here with ``cryptography``.
- ``FeedServer``: http.server in a thread serving an Atom feed and its documents, with
  ETag/Last-Modified and 304s, counting what it was asked."""
from __future__ import annotations

import threading
from pathlib import Path
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SAMPLES = Path(__file__).resolve().parent / "cap_samples"
# Appendix A.2 of the OASIS CAP 1.2 specification, as published (cap_samples/README.md).
OASIS_THUNDERSTORM = (SAMPLES / "oasis_a2_thunderstorm.xml").read_text(encoding="utf-8")


def _t(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def national(identifier: str, *, sender: str = "12379@cma.gov.cn", event: str = "暴雨", colour: str = "橙色",
             geocode: str = "510199101", area: str = "东山镇", msg_type: str = "Alert", references: str = "",
             extra_area: str = "") -> str:
    """A zh-CN warning as the national release system writes it (now, expiring in 6 h)."""
    now = datetime.now(UTC).replace(microsecond=0)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>{sender}</sender>
  <sent>{_t(now)}</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {references}
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>{event}</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <eventCode><valueName>11B03</valueName><value>{event}{colour}预警</value></eventCode>
    <effective>{_t(now)}</effective>
    <expires>{_t(now + timedelta(hours=6))}</expires>
    <senderName>示范县气象台</senderName>
    <headline>示范县气象台发布{event}{colour}预警信号</headline>
    <description>示范县气象台{now:%d日%H时}发布{event}{colour}预警信号：预计未来6小时内{area}降雨量将达50毫米以上，山区有山洪、滑坡风险。</description>
    <instruction>1.政府及相关部门按照职责做好防{event}应急工作；2.切断有危险的室外电源，暂停户外作业；3.危险地带人员立即转移。</instruction>
    <web>http://www.12379.cn</web>
    <area>
      <areaDesc>{area}</areaDesc>
      <geocode><valueName>GB/T 2260</valueName><value>{geocode}</value></geocode>
    </area>{extra_area}
  </info>
</alert>
"""


class Signer:
    """A sender's key and self-signed certificate, and signatures made with them."""

    def __init__(self, common_name: str = "示范县气象台") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                     .not_valid_after(now + timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def sign(self, xml: str) -> bytes:
        from lxml import etree
        from signxml import XMLSigner, methods
        root = etree.fromstring(xml.encode())
        signed = XMLSigner(method=methods.enveloped, signature_algorithm="rsa-sha256",
                           digest_algorithm="sha256").sign(root, key=self.key_pem, cert=self.cert_pem)
        return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")


PUBLISHED = _t(datetime.now(UTC))


def atom(entries: list[tuple[str, str, str]], title: str = "示范县突发事件预警信息") -> bytes:
    """An Atom feed; entries are (id, title, link), each updated when this module was loaded
    (a feed lists an unchanged entry with the same <updated>)."""
    now = PUBLISHED
    items = "".join(f"""
  <entry>
    <id>{eid}</id>
    <title>{etitle}</title>
    <updated>{now}</updated>
    <link rel="alternate" type="application/cap+xml" href="{link}"/>
  </entry>""" for eid, etitle, link in entries)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <id>urn:uuid:0d8a6f1e-cap-feed</id>
  <title>{title}</title>
  <updated>{now}</updated>{items}
</feed>
""".encode()


class FeedServer:
    """Serves ``docs`` (path → (bytes, content type)); the feed at /feed.atom with ``etag``
    (304 when the client sends it back). ``log`` records (path, status, If-None-Match)."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[bytes, str]] = {}
        self.etag = '"v1"'
        self.log: list[tuple[str, int, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with server.lock:
                    doc = server.docs.get(self.path)
                    etag = server.etag if self.path == "/feed.atom" else None
                inm = self.headers.get("If-None-Match")
                if doc is None:
                    status = 404
                    self.send_response(404)
                    self.end_headers()
                elif etag and inm == etag:
                    status = 304
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                else:
                    status = 200
                    self.send_response(200)
                    self.send_header("Content-Type", doc[1])
                    self.send_header("Content-Length", str(len(doc[0])))
                    if etag:
                        self.send_header("ETag", etag)
                        self.send_header("Last-Modified", "Mon, 07 Dec 2026 02:00:00 GMT")
                    self.end_headers()
                    self.wfile.write(doc[0])
                with server.lock:
                    server.log.append((self.path, status, inm))

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="cap-feed-server", daemon=True)

    def put(self, path: str, body: bytes | str, content_type: str = "application/cap+xml") -> None:
        with self.lock:
            self.docs[path] = (body.encode() if isinstance(body, str) else body, content_type)

    def feed(self, entries: list[tuple[str, str, str]], etag: str) -> None:
        with self.lock:
            self.docs["/feed.atom"] = (atom(entries), "application/atom+xml")
            self.etag = etag

    def asked(self, path: str) -> list[tuple[int, str | None]]:
        with self.lock:
            return [(s, inm) for p, s, inm in self.log if p == path]

    def __enter__(self) -> FeedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
