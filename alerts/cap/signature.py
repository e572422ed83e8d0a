"""XML signatures of CAP alerts (CAP 1.2 §3.3.2.1: an enveloped XML-DSig ``<Signature>`` in
``<alert>``), checked with signxml when the site file configures the sender's certificate
(``cap.senders``). A sender with a certificate is trusted only with a valid signature over the
whole alert; senders without one are taken as before (an unchecked signature is ignored).

    check(site, raw, sender)     # raises CapError with the reason, Chinese first
"""
from __future__ import annotations

from pathlib import Path

from lxml import etree

import xmlsafe
from signxml import InvalidInput, InvalidSignature, SignatureConfiguration, XMLVerifier
from signxml.exceptions import InvalidCertificate, InvalidDigest

from alerts.cap.parse import CapError
from config.site import Site

DSIG = "http://www.w3.org/2000/09/xmldsig#"
# The <Signature> is a child of <alert> and signs one reference (the alert itself).
_EXPECT = SignatureConfiguration(location="./", expect_references=1)


def certificate_path(site: Site, sender: str) -> Path | None:
    for s in site.cap.senders:
        if s.sender == sender:
            path = Path(s.certificate_file).expanduser()
            if not path.is_absolute() and site.source_file is not None:
                path = site.source_file.parent / path
            return path
    return None


def check(site: Site, raw: bytes, sender: str) -> bool:
    """True when the alert's signature verified; False when the sender has no certificate
    configured (nothing to check). Raises CapError when it must be refused."""
    path = certificate_path(site, sender)
    if path is None:
        return False
    try:
        cert = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CapError(f"发送方证书无法读取，预警未导入 (the certificate of sender {sender!r}, {path}, cannot be read: "
                       f"{type(exc).__name__})") from None
    # parse_cap has read it already (xmlsafe): not refused here; signxml reads the bytes again
    # with entities and the network off.
    root = xmlsafe.parse(raw)
    if root.find(f"{{{DSIG}}}Signature") is None:
        raise CapError(f"预警未签名，已拒收 (sender {sender!r} must sign its alerts: no enveloped <Signature> "
                       "in <alert>)")
    try:
        result = XMLVerifier().verify(raw, x509_cert=cert, expect_config=_EXPECT)
    except (InvalidSignature, InvalidDigest, InvalidCertificate, InvalidInput) as exc:
        raise CapError(f"XML 签名验证失败，已拒收 (the alert's signature does not verify with the certificate "
                       f"configured for {sender!r}: {exc})") from None
    # The signature must cover the alert itself, not some other element of the document
    # (a wrapped signature): the signed content is the alert less its <Signature>.
    unsigned = xmlsafe.parse(raw)
    for sig in unsigned.findall(f"{{{DSIG}}}Signature"):
        unsigned.remove(sig)
    if etree.tostring(result.signed_xml, method="c14n") != etree.tostring(unsigned, method="c14n"):
        raise CapError("XML 签名未覆盖整条预警，已拒收 (the signature does not sign the whole <alert>)")
    return True
