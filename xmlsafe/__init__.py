"""The one way the hub reads XML from outside: CAP warnings, ONVIF/SOAP replies and
WS-Discovery datagrams, GB/T 28181 MANSCDP bodies when they come.

Why a package of its own, at the bottom of the layers: every source (cameras/, devices/)
and alerts/ read XML, so it must sit below all of them, and none of the shared ground fits it
— config/ is what the site says, bus/ is the MQTT contract, store/ is PostgreSQL. Like
config/ it imports nothing of the hub; everything may import it (tests/test_layering.py).

Two steps, each with a reason:

1. **Decode in Python** (:func:`decode`), following XML 1.0 Appendix F: a byte order mark,
   else the first bytes (UTF-16/32 without a mark), else the encoding the XML declaration
   names, else UTF-8. Any encoding Python knows is read — GB2312, GBK, GB18030 (older Chinese
   platforms and most GB/T 28181 devices send these), UTF-16 with or without a mark, Big5, …
   Text labelled GB2312 is decoded as GBK, its superset, as browsers do (WHATWG Encoding
   Standard): senders label GBK text GB2312 all the time. Decoding here rather than in
   libxml2 gives one behaviour for every caller and refusals that name the encoding and the
   offending bytes, Chinese first, instead of libxml2's "Invalid bytes in character encoding".
2. **Parse with lxml, hardened**: the text (re-encoded as UTF-8, the declaration taken off)
   goes to libxml2 with entity substitution off, no network, no DTD loading and its size and
   entity-amplification limits on (``huge_tree=False``); a document with a ``<!DOCTYPE>`` is
   refused before libxml2 sees it (the prolog is only whitespace, comments and processing
   instructions before it, so the check reads the decoded prolog and is not fooled by a
   ``<!DOCTYPE`` quoted in CDATA), and once more from the parsed tree's docinfo. No CAP
   alert, SOAP reply or MANSCDP body needs a DTD, so none is accepted: no entity is ever
   expanded, no external file or URL is ever fetched, whatever the encoding.

lxml rather than defusedxml: defusedxml guards the standard library's expat, which cannot
read multi-byte encodings at all ("multi-byte encodings are not supported" — GB2312 was a
500), and its lxml wrapper is deprecated; lxml is already what zeep (onvif-zeep-async) parses
SOAP with, so the hub's own reading and zeep's give the same elements. zeep parses the SOAP
replies of cameras itself: :func:`harden_zeep` sets its forbid_dtd / forbid_entities /
forbid_external switches and turns its huge-tree mode off (onvif-zeep-async turns it on).
"""
from __future__ import annotations

import codecs
import re
from typing import Any

from lxml import etree

DEFAULT_MAX_BYTES = 1 << 20

# Python codecs that are not character sets: a document naming one is refused as unknown.
_NOT_CHARSETS = {"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem", "palmos"}
# Byte order marks, longest first (a UTF-32LE mark begins like a UTF-16LE one).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# "<?" in the wide encodings, without a mark (XML 1.0 Appendix F.1).
_WIDE = ((b"\x00\x00\x00<", "utf-32-be"), (b"<\x00\x00\x00", "utf-32-le"),
         (b"\x00<\x00?", "utf-16-be"), (b"<\x00?\x00", "utf-16-le"))
_FAMILY = {"utf-16": "utf-16", "utf-16-le": "utf-16", "utf-16-be": "utf-16",
           "utf-32": "utf-32", "utf-32-le": "utf-32", "utf-32-be": "utf-32", "utf-8": "utf-8"}
_DECLARATION = re.compile(
    r"""<\?xml\s+version\s*=\s*(["'])1\.[0-9]+\1"""
    r"""(?:\s+encoding\s*=\s*(["'])(?P<encoding>[A-Za-z][A-Za-z0-9._-]*)\2)?"""
    r"""(?:\s+standalone\s*=\s*(["'])(?:yes|no)\4)?\s*\?>""")
# The prolog before a document type declaration: whitespace, comments, processing instructions.
_DOCTYPE = re.compile(r"(?:\s+|<!--.*?-->|<\?.*?\?>)*<!DOCTYPE", re.DOTALL | re.IGNORECASE)

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          attribute_defaults=False, huge_tree=False, remove_comments=True, remove_pis=True)

# What zeep must be told (onvif-zeep-async's defaults allow DTDs and external fetches and turn
# libxml2's limits off).
ZEEP_SETTINGS = {"forbid_dtd": True, "forbid_entities": True, "forbid_external": True, "xml_huge_tree": False}


class XmlRefused(ValueError):
    """The document is not read; the message says why, in Chinese first, then in English
    with the specifics (which encoding, which bytes, which line)."""


def _label(name: str) -> str:
    return name.upper()


def decode(data: bytes) -> str:
    """The document's text, decoded as its byte order mark, first bytes or XML declaration
    say (UTF-8 when nothing does); refused with the encoding named when that encoding is
    unknown, contradicts the mark, or the bytes do not decode."""
    raw = bytes(data)
    bom, family = b"", None
    for mark, name in _BOMS:
        if raw.startswith(mark):
            bom, family = mark, name
            break
    else:
        for start, name in _WIDE:
            if raw.startswith(start):
                family = name
                break
    body = raw[len(bom):]
    head = body[:512].decode(family or "latin-1", errors="replace")
    match = _DECLARATION.match(head)
    declared = match.group("encoding") if match else None
    if declared is None:
        encoding, said = family or "utf-8", f"{_label(family or 'utf-8')} (no encoding declared)"
    else:
        said = declared
        try:
            encoding = codecs.lookup(declared).name
        except LookupError:
            encoding = None
        if encoding is None or encoding.replace("_", "-") in _NOT_CHARSETS:
            raise XmlRefused(f"不支持的字符编码 {declared} (the XML declaration names the encoding {declared!r}, "
                             "which the hub does not know; use UTF-8, GB18030, GBK, GB2312 or UTF-16)")
        encoding = {"utf-8-sig": "utf-8", "gb2312": "gbk"}.get(encoding, encoding)   # GB2312 labels carry GBK (WHATWG)
        if family is not None:
            if _FAMILY.get(encoding) != _FAMILY[family] or encoding not in (family, "utf-16", "utf-32"):
                raise XmlRefused(f"字符编码自相矛盾 (the document begins as {_label(family)}, but its XML "
                                 f"declaration says {declared})")
            encoding = family                               # the mark or the first bytes give the byte order
        elif _FAMILY.get(encoding) in ("utf-16", "utf-32"):
            raise XmlRefused(f"字符编码自相矛盾 (the XML declaration says {declared}, but the document has "
                             f"neither a byte order mark nor {declared} bytes)")
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = " ".join(f"0x{b:02X}" for b in exc.object[exc.start:exc.end][:4])
        name = declared or _label(encoding)
        raise XmlRefused(f"文档内容不是有效的 {name} 编码 (bytes {bad} at offset {exc.start + len(bom)} "
                         f"do not decode as {said})") from None
    except LookupError:
        raise XmlRefused(f"不支持的字符编码 {declared} (Python cannot decode {declared!r} as text)") from None
    return text.removeprefix("\ufeff")


def parse(data: bytes | str, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> etree._Element:
    """The root element of an XML document from outside the hub, read as the module says;
    :class:`XmlRefused` for anything else (never another exception for bad input).

    ``str`` is text already decoded: an encoding its declaration names is ignored."""
    if max_bytes is not None and len(data) > max_bytes:
        raise XmlRefused(f"文档过大 (the document is {len(data)} bytes, more than the {max_bytes} accepted)")
    text = data if isinstance(data, str) else decode(data)
    text = text.removeprefix("\ufeff")
    declaration = _DECLARATION.match(text)
    if declaration is not None:
        text = text[declaration.end():]
    elif text.startswith("<?xml") and text[5:6].isspace():
        raise XmlRefused(f"XML 声明格式错误 (the XML declaration is malformed: {text[:80]!r})")
    if _DOCTYPE.match(text):
        raise XmlRefused("不接受 DTD 和实体声明 (the document has a <!DOCTYPE>: DTDs and entities are not "
                         "accepted, so nothing is expanded or fetched)")
    try:
        root = etree.fromstring(text.encode("utf-8"), parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise XmlRefused(f"XML 格式错误 (not well-formed XML: {exc.msg})") from None
    if root is None:
        raise XmlRefused("XML 文档为空 (the document has no root element)")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlRefused("不接受 DTD 和实体声明 (the document has a <!DOCTYPE>: DTDs and entities are not "
                         "accepted, so nothing is expanded or fetched)")
    return root


def harden_zeep(settings: Any) -> Any:
    """Set a zeep ``Settings`` object's XML switches to the hub's policy (``ZEEP_SETTINGS``);
    the same object back. zeep refuses a reply with a DTD, entities or an external
    reference, and keeps libxml2's size limits."""
    for name, value in ZEEP_SETTINGS.items():
        setattr(settings, name, value)
    return settings


__all__ = ["DEFAULT_MAX_BYTES", "XmlRefused", "ZEEP_SETTINGS", "decode", "harden_zeep", "parse"]
