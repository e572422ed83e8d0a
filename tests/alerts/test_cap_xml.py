"""CAP alerts in the encodings their senders use, and hostile ones in every encoding.

Peers: the OASIS CAP 1.2 specification's own examples (Appendix A.2, A.3) and a zh-CN warning
written the way China's national early-warning system writes them (tests/alerts/cap_samples),
re-encoded here byte for byte. Issue 16, defects 4 (GB2312/GBK was a 500, a UTF-16 alert a
misleading 400) and 5 (the DTD ban was a byte scan of UTF-8: in UTF-16 an entity was expanded)."""
from __future__ import annotations

import codecs
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alerts.cap.parse import CapError, parse_cap

SAMPLES = Path(__file__).with_name("cap_samples")
CST = timezone(timedelta(hours=8))


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def encoded(text: str, label: str, codec: str, bom: bytes = b"") -> bytes:
    """The document with its declaration naming ``label``, in ``codec``'s bytes."""
    head, rest = text.split("?>", 1)
    declaration = '<?xml version="1.0" encoding="%s"?>' % label if label else '<?xml version="1.0"?>'
    return bom + (declaration + rest).encode(codec)


# (declared label, Python codec, byte order mark)
ENCODINGS = [
    ("GB2312", "gb2312", b""),
    ("gb2312", "gb2312", b""),
    ("GBK", "gbk", b""),
    ("GB18030", "gb18030", b""),
    ("UTF-16", "utf-16-le", codecs.BOM_UTF16_LE),
    ("UTF-16", "utf-16-be", codecs.BOM_UTF16_BE),
    ("UTF-16LE", "utf-16-le", b""),
    ("UTF-16BE", "utf-16-be", b""),
    ("", "utf-16-le", codecs.BOM_UTF16_LE),          # no encoding declared: the mark says it
    ("UTF-8", "utf-8", codecs.BOM_UTF8),
]


@pytest.mark.parametrize("label,codec,bom", ENCODINGS, ids=[f"{l or 'none'}-{c}-{'bom' if b else 'nobom'}"
                                                            for l, c, b in ENCODINGS])
def test_a_chinese_warning_in_every_encoding_its_senders_use(label, codec, bom):
    alert = parse_cap(encoded(sample("zh_cn_rainstorm.xml"), label, codec, bom))
    info = alert.info()
    assert info.language == "zh-CN"
    assert info.event == "暴雨"
    assert info.headline == "示范县气象台发布暴雨橙色预警[Ⅱ级/严重]"
    assert info.sender_name == "示范县气象台"
    assert info.instruction.startswith("请危险地带人员立即转移")
    assert info.areas[0].description == "东山镇" and info.areas[0].geocodes == [("GB/T 2260", "510199101")]
    assert "东山镇降雨量将达80毫米以上" in alert.text                # the decoded document is kept, not mojibake


@pytest.mark.parametrize("name", ["oasis_a2_thunderstorm.xml", "oasis_a3_earthquake_update.xml"])
@pytest.mark.parametrize("label,codec,bom", [("GB2312", "gb2312", b""), ("UTF-16", "utf-16-be", codecs.BOM_UTF16_BE),
                                             ("UTF-16LE", "utf-16-le", b"")])
def test_the_oasis_examples_re_encoded(name, label, codec, bom):
    original = parse_cap(sample(name).encode("utf-8"))
    again = parse_cap(encoded(sample(name), label, codec, bom))
    assert (again.identifier, again.sent, again.msg_type, again.references) == \
           (original.identifier, original.sent, original.msg_type, original.references)
    assert again.infos[0].areas == original.infos[0].areas
    assert again.infos[0].description == original.infos[0].description
    if name.startswith("oasis_a2"):
        assert again.identifier == "KSTO1055887203"
        assert again.infos[0].areas[0].polygons[0][0] == (38.47, -120.14)
        assert again.infos[0].expires == datetime(2003, 6, 17, 16, 0, tzinfo=timezone(timedelta(hours=-7)))
    else:
        assert again.references == [("trinet@caltech.edu", "TRI13970876.1", "2003-06-11T20:30:00-07:00")]
        assert again.infos[0].areas[0].circles == [(32.9525, -115.5527, 0.0)]


def test_a_gb2312_label_on_gbk_text_is_read_as_gbk():
    """Senders label GBK text GB2312 all the time (browsers read it as GBK too): 喆 and 镕 are
    GBK, not GB2312."""
    text = sample("zh_cn_rainstorm.xml").replace("示范县气象台</senderName>", "示范县气象台 王喆 朱镕</senderName>")
    assert parse_cap(encoded(text, "GB2312", "gbk")).info().sender_name == "示范县气象台 王喆 朱镕"


@pytest.mark.parametrize("data,reason", [
    (encoded(sample("zh_cn_rainstorm.xml"), "X-GB-NOPE", "utf-8"), "不支持的字符编码 X-GB-NOPE"),
    (encoded(sample("zh_cn_rainstorm.xml"), "base64", "utf-8"), "不支持的字符编码 base64"),
    # UTF-8 bytes under a GB2312 label: 暴 is E6 9A B4 in UTF-8, and B4 followed by "<" is no GBK character
    (encoded(sample("zh_cn_rainstorm.xml").replace("暴雨</event>", "暴</event>"), "GB2312", "utf-8"),
     "文档内容不是有效的 GB2312 编码"),
    (encoded(sample("zh_cn_rainstorm.xml"), "UTF-8", "gbk"), "文档内容不是有效的 UTF-8 编码"),
    (encoded(sample("zh_cn_rainstorm.xml"), "UTF-16", "utf-8"), "字符编码自相矛盾"),
    (encoded(sample("zh_cn_rainstorm.xml"), "GBK", "utf-16-le", codecs.BOM_UTF16_LE), "字符编码自相矛盾"),
    (encoded(sample("zh_cn_rainstorm.xml"), "UTF-16BE", "utf-16-le", codecs.BOM_UTF16_LE), "字符编码自相矛盾"),
])
def test_an_unknown_or_wrong_encoding_is_refused_naming_it(data, reason):
    with pytest.raises(CapError) as caught:
        parse_cap(data)
    message = str(caught.value)
    assert message.startswith(reason), message
    assert "(" in message and message.isascii() is False       # Chinese first, then the English specifics


def test_undecodable_bytes_are_named_with_their_offset():
    data = encoded(sample("zh_cn_rainstorm.xml"), "GB2312", "gb2312")
    at = data.index("东山镇".encode("gb2312"))
    broken = data[:at] + b"\xff\xff" + data[at + 2:]
    with pytest.raises(CapError, match=rf"0xFF .*at offset {at} do not decode as GB2312"):
        parse_cap(broken)


# ---------------------------------------------------------------------------- hostile documents

LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE alert [\n<!ENTITY lol "lol">\n'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1 if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10))
          + ']>\n<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol9;</identifier></alert>')
LAUGHS = LAUGHS.replace("&lol0;", "&lol;")
# An internal entity the old byte scan let through in UTF-16: its value would be the alert's text.
SMUGGLED = sample("zh_cn_rainstorm.xml").replace(
    "<alert ", '<!DOCTYPE alert [<!ENTITY spoken "立即撤离全村（伪造）">]>\n<alert ', 1).replace(
    "<headline>示范县气象台发布暴雨橙色预警[Ⅱ级/严重]</headline>", "<headline>&spoken;</headline>")


class _Canary(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        body = b'<!ENTITY secret "exfiltrated">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def canary(tmp_path):
    """An HTTP server and a file an external entity could reach: nothing may touch either."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    _Canary.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-7f3a-not-to-be-read")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", secret
    finally:
        server.shutdown()
        server.server_close()


def external(url: str, secret: Path) -> str:
    return sample("zh_cn_rainstorm.xml").replace(
        "<alert ", f'<!DOCTYPE alert [<!ENTITY file SYSTEM "file://{secret}"><!ENTITY net SYSTEM "{url}/x">'
                   f'<!ENTITY % dtd SYSTEM "{url}/dtd"> %dtd;]>\n<alert ', 1).replace(
        "<event>暴雨</event>", "<event>&file;&net;</event>")


HOSTILE_ENCODINGS = [("UTF-8", "utf-8", b""), ("UTF-16", "utf-16-le", codecs.BOM_UTF16_LE),
                     ("UTF-16", "utf-16-be", codecs.BOM_UTF16_BE), ("UTF-16LE", "utf-16-le", b""),
                     ("GB18030", "gb18030", b"")]


@pytest.mark.parametrize("label,codec,bom", HOSTILE_ENCODINGS, ids=[f"{c}-{'bom' if b else 'nobom'}"
                                                                    for _, c, b in HOSTILE_ENCODINGS])
@pytest.mark.parametrize("kind", ["billion-laughs", "internal-entity"])
def test_dtds_are_refused_in_every_encoding(kind, label, codec, bom):
    text = LAUGHS if kind == "billion-laughs" else SMUGGLED
    with pytest.raises(CapError) as caught:
        parse_cap(encoded(text, label, codec, bom))
    message = str(caught.value)
    assert message.startswith("不接受 DTD 和实体声明") and "DTDs and entities are not accepted" in message
    assert "lol" not in message and "立即撤离全村" not in message           # nothing expanded into the reason


@pytest.mark.parametrize("label,codec,bom", HOSTILE_ENCODINGS, ids=[f"{c}-{'bom' if b else 'nobom'}"
                                                                    for _, c, b in HOSTILE_ENCODINGS])
def test_external_entities_are_refused_and_nothing_is_fetched(canary, label, codec, bom):
    url, secret = canary
    with pytest.raises(CapError, match="不接受 DTD 和实体声明") as caught:
        parse_cap(encoded(external(url, secret), label, codec, bom))
    assert "CANARY" not in str(caught.value) and "exfiltrated" not in str(caught.value)
    assert _Canary.hits == []


def test_a_doctype_quoted_in_cdata_is_text_not_a_dtd():
    text = sample("zh_cn_rainstorm.xml").replace(
        "<description>", "<description><![CDATA[<!DOCTYPE html><p>网页版</p>]]>", 1)
    assert parse_cap(encoded(text, "UTF-16", "utf-16-le", codecs.BOM_UTF16_LE)).info().description.startswith(
        "<!DOCTYPE html><p>网页版</p>示范县气象台")
