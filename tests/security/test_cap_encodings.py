"""POST /api/alerts/cap with warnings in the encodings older Chinese platforms send, and with
hostile ones: every answer is a 201 with the right Chinese text kept, or a 400 whose reason
(Chinese first) names what is wrong — never a 500, never an expanded entity (issue 16,
defects 4 and 5)."""
from __future__ import annotations

import codecs
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from config.vocabulary import Role
from store.db import connect
from tests.alerts.test_cap_xml import SMUGGLED, encoded, sample


@pytest.fixture(scope="module")
def dispatcher(api, tokens):
    """东山镇's dispatcher: the warning is for 东山镇."""
    with httpx.Client(base_url=api.base_url, timeout=60, headers={"Authorization": f"Bearer {tokens[Role.dispatcher]}"}) as c:
        yield c


def fresh(text: str) -> tuple[str, str]:
    """The zh-CN sample with an identifier of its own, sent now (a warning from 2026-11-23 may
    be stale by the time the suite runs)."""
    ident = f"51019941600000_{uuid.uuid4().hex[:12]}"
    sent = datetime.now(UTC).astimezone().replace(microsecond=0).isoformat()
    return ident, text.replace("51019941600000_20261123100000", ident).replace("2026-11-23T10:00:00+08:00", sent)


def stored(api, ident: str) -> dict:
    with connect(api.server.config.app.state.db_url) as conn:
        return conn.execute(
            "SELECT a.xml, c.title, c.description FROM cap_alerts a JOIN cases c ON c.id = a.case_id "
            "WHERE a.identifier = %s", (ident,)).fetchone()


@pytest.mark.parametrize("label,codec,bom", [("GB2312", "gb2312", b""), ("GBK", "gbk", b""),
                                             ("GB18030", "gb18030", b""),
                                             ("UTF-16", "utf-16-le", codecs.BOM_UTF16_LE),
                                             ("UTF-16BE", "utf-16-be", b"")])
def test_a_warning_in_a_chinese_or_wide_encoding_becomes_a_case(api, dispatcher, label, codec, bom):
    ident, text = fresh(sample("zh_cn_rainstorm.xml"))
    r = dispatcher.post("/api/alerts/cap", content=encoded(text, label, codec, bom),
                   headers={"Content-Type": "application/xml"})
    assert r.status_code == 201, r.text
    assert r.json()["action"] == "created" and r.json()["case_number"]
    row = stored(api, ident)
    assert "示范县气象台发布暴雨橙色预警" in row["title"] + row["description"]
    assert "东山镇降雨量将达80毫米以上" in row["xml"] and "\ufffd" not in row["xml"]    # kept as sent, decoded


@pytest.mark.parametrize("body,reason", [
    (encoded(sample("zh_cn_rainstorm.xml"), "X-GB-NOPE", "utf-8"), "不支持的字符编码 X-GB-NOPE"),
    (b"\xff\xfe" + '<?xml version="1.0" encoding="GBK"?><alert/>'.encode("utf-16-le"), "字符编码自相矛盾"),
    (encoded(sample("zh_cn_rainstorm.xml"), "GB2312", "gb2312")[:-40] + b"\xff\xff</alert>",
     "文档内容不是有效的 GB2312 编码"),
    (encoded(SMUGGLED, "UTF-16", "utf-16-le", codecs.BOM_UTF16_LE), "不接受 DTD 和实体声明"),
])
def test_a_bad_encoding_or_a_dtd_is_a_400_with_its_reason(api, dispatcher, body, reason):
    r = dispatcher.post("/api/alerts/cap", content=body, headers={"Content-Type": "application/xml"})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(reason), r.json()
    assert "立即撤离全村" not in r.text
    with connect(api.server.config.app.state.db_url) as conn:
        assert conn.execute("SELECT count(*) AS n FROM cases WHERE title LIKE %s OR description LIKE %s",
                            ("%立即撤离全村%", "%立即撤离全村%")).fetchone()["n"] == 0
