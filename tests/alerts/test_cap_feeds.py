"""CAP feeds (issue 16): warnings arrive by themselves. A real HTTP server serves an Atom feed
of published-style CAP documents; the real alerts worker polls it (conditional GET), imports
each alert once through the import flow as the hub, audited, keeps a broken entry with its
reason and retries it, and verifies the signature of a sender whose certificate is configured."""
from __future__ import annotations

import uuid

import pytest

from alerts.cap.feeds import FeedError, parse_feed
from tests.alerts.cap_feed_samples import OASIS_THUNDERSTORM, FeedServer, Signer, national
from tests.alerts.conftest import EngineRunner, one, query, wait_for, write_site

FEED = "county-met"
SIGNED_SENDER = "signed@met.county.example"


@pytest.fixture
def feed_server():
    with FeedServer() as server:
        yield server


def _entry(db: str, entry_id: str) -> dict | None:
    return one(db, "SELECT * FROM cap_feed_entries WHERE feed = %s AND entry_id = %s", (FEED, entry_id))


def _state(db: str, entry_id: str, *states: str):
    row = _entry(db, entry_id)
    return row if row is not None and row["state"] in states else None


def test_a_feed_brings_warnings_in_once_keeps_failures_and_checks_signatures(site_db, mqtt, tmp_path, feed_server):
    tag = uuid.uuid4().hex[:8]
    signer = Signer()
    (tmp_path / "met.pem").write_text(signer.cert_pem, encoding="ascii")

    def add_feed(data: dict) -> None:
        data.setdefault("cap", {})["feeds"] = [{"name": FEED, "url": f"{feed_server.url}/feed.atom", "interval": "300ms",
                              "retry": {"first": "300ms", "max_interval": "1s"}}]
        data["cap"]["senders"] = [{"sender": SIGNED_SENDER, "certificate_file": "met.pem"}]   # beside the site file

    site = write_site(tmp_path / "site.yaml", mutate=add_feed)
    ids = {k: f"51019941600000_{tag}_{k}" for k in ("a", "signed", "tampered", "unsigned")}
    feed_server.put("/cap/a.xml", national(ids["a"]))
    feed_server.put("/cap/oasis.xml", OASIS_THUNDERSTORM)
    signed = signer.sign(national(ids["signed"], sender=SIGNED_SENDER, event="大风", colour="蓝色"))
    feed_server.put("/cap/signed.xml", signed)
    tampered = signer.sign(national(ids["tampered"], sender=SIGNED_SENDER, event="寒潮"))
    feed_server.put("/cap/tampered.xml", tampered.replace("寒潮".encode(), "地震".encode(), 1))
    feed_server.put("/cap/unsigned.xml", national(ids["unsigned"], sender=SIGNED_SENDER, event="高温"))
    # /cap/broken.xml is not there yet: the server answers 404.
    entries = [(f"urn:{tag}:a", "暴雨橙色预警", "/cap/a.xml"), (f"urn:{tag}:oasis", "SEVERE THUNDERSTORM", "/cap/oasis.xml"),
               (f"urn:{tag}:broken", "道路结冰预警", "/cap/broken.xml"), (f"urn:{tag}:signed", "大风蓝色预警", "/cap/signed.xml"),
               (f"urn:{tag}:tampered", "寒潮预警", "/cap/tampered.xml"),
               (f"urn:{tag}:unsigned", "高温预警", "/cap/unsigned.xml")]
    feed_server.feed(entries, '"v1"')

    with EngineRunner(site_db, mqtt.url, site):
        a = wait_for(lambda: _state(site_db, f"urn:{tag}:a", "imported"), 20, what="entry a imported")
        case = one(site_db, "SELECT * FROM cases WHERE channel = 'cap' AND source_ref = %s",
                   (f"12379@cma.gov.cn|{ids['a']}",))
        assert case is not None and case["state"] == "registered" and case["owner_code"] == "510199101000"
        cap = one(site_db, "SELECT * FROM cap_alerts WHERE id = %s", (a["cap_id"],))
        assert cap["imported_by"] == f"system:cap-feed:{FEED}" and cap["case_id"] == case["id"]
        assert cap["broadcast_id"] is not None                       # 东山镇's speakers are told

        # The signed alert verifies against the configured certificate and is imported.
        wait_for(lambda: _state(site_db, f"urn:{tag}:signed", "imported"), 10, what="the signed alert")
        # A signature that does not verify, and no signature from a sender that must sign: refused, with reasons.
        tampered_row = wait_for(lambda: _state(site_db, f"urn:{tag}:tampered", "refused"), 10, what="tampered refused")
        assert tampered_row["reason"].startswith("XML 签名验证失败")
        unsigned_row = wait_for(lambda: _state(site_db, f"urn:{tag}:unsigned", "refused"), 10, what="unsigned refused")
        assert unsigned_row["reason"].startswith("预警未签名")
        assert not query(site_db, "SELECT 1 FROM cap_alerts WHERE identifier = ANY(%s)",
                         ([ids["tampered"], ids["unsigned"]],))
        # The OASIS example is for California: refused with the reason, kept.
        oasis = wait_for(lambda: _state(site_db, f"urn:{tag}:oasis", "refused"), 10, what="the OASIS example refused")
        assert oasis["reason"] and not query(site_db, "SELECT 1 FROM cap_alerts WHERE identifier = 'KSTO1055887203'")

        # The broken entry failed, is kept with its reason and tried again with backoff.
        broken = wait_for(lambda: (r := _state(site_db, f"urn:{tag}:broken", "failed")) and r["attempts"] >= 2 and r,
                          10, what="the broken entry retried")
        assert "HTTP 404" in broken["reason"] and broken["next_attempt_at"] is not None

        # The feed did not change: the worker asked with its ETag and was answered 304.
        wait_for(lambda: (304, '"v1"') in feed_server.asked("/feed.atom"), 10, what="a conditional GET answered 304")
        assert sum(1 for s, _ in feed_server.asked("/feed.atom") if s == 200) == 1
        assert len(feed_server.asked("/cap/a.xml")) == 1             # an imported entry is not fetched again

        # The document appears: the retry imports it.
        feed_server.put("/cap/broken.xml", national(f"{tag}-ice", event="道路结冰", colour="黄色", geocode="510199101202",
                                                   area="桃园村"))
        wait_for(lambda: _state(site_db, f"urn:{tag}:broken", "imported"), 10, what="the broken entry imported on retry")

        # A new version of the feed (new ETag) lists the same warning again under another entry: one case.
        feed_server.put("/cap/a-again.xml", national(ids["a"]))
        feed_server.feed(entries + [(f"urn:{tag}:a-again", "暴雨橙色预警（转发）", "/cap/a-again.xml")], '"v2"')
        again = wait_for(lambda: _state(site_db, f"urn:{tag}:a-again", "duplicate"), 10, what="the re-listed warning")
        assert again["cap_id"] == a["cap_id"]
        assert len(query(site_db, "SELECT 1 FROM cases WHERE source_ref = %s", (f"12379@cma.gov.cn|{ids['a']}",))) == 1

    audits = query(site_db, "SELECT outcome, target, detail FROM audit_log WHERE actor = %s AND action = 'cap.import' "
                            "AND detail->>'entry' LIKE %s ORDER BY id", (f"system:cap-feed:{FEED}", f"urn:{tag}:%"))
    by_entry = {}
    for r in audits:
        by_entry.setdefault(r["detail"]["entry"], []).append(r["detail"].get("state", r["outcome"]))
    assert by_entry[f"urn:{tag}:a"] == ["ok"] and by_entry[f"urn:{tag}:tampered"] == ["refused"]
    assert by_entry[f"urn:{tag}:broken"][-1] == "ok" and set(by_entry[f"urn:{tag}:broken"][:-1]) == {"failed"}
    assert {r["outcome"] for r in audits} == {"ok", "failed"}
    assert next(r for r in audits if r["detail"]["entry"] == f"urn:{tag}:a")["target"] == case["number"]
    state = one(site_db, "SELECT * FROM cap_feeds WHERE name = %s", (FEED,))
    assert state["etag"] == '"v2"' and state["failures"] == 0 and state["last_error"] is None


def test_a_feed_that_fails_is_polled_again_with_backoff_and_says_why(site_db, mqtt, tmp_path, feed_server):
    def add_feed(data: dict) -> None:
        data.setdefault("cap", {})["feeds"] = [{"name": "gone", "url": f"{feed_server.url}/missing.atom", "interval": "100ms",
                              "retry": {"first": "400ms", "max_interval": "10s"}}]

    with EngineRunner(site_db, mqtt.url, write_site(tmp_path / "site.yaml", mutate=add_feed)):
        row = wait_for(lambda: (r := one(site_db, "SELECT * FROM cap_feeds WHERE name = 'gone'")) and r["failures"] >= 2
                       and r, 10, what="two failed polls")
        assert "HTTP 404" in row["last_error"] and row["last_status"] is None
    asked = feed_server.asked("/missing.atom")
    # Backoff 0.4 s, 0.8 s, 1.6 s …, not the 0.1 s interval of a healthy feed.
    assert 2 <= len(asked) <= 4, asked


def test_parse_feed_reads_atom_rss_and_inline_alerts_and_refuses_dtds():
    rss = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
      <item><title>x</title><guid>g1</guid><link>https://example.org/page</link>
        <enclosure url="/cap/1.xml" type="application/cap+xml" length="1"/></item>
      <item><title>y</title><link>https://example.org/cap/2.xml</link></item></channel></rss>"""
    got = parse_feed(rss, "https://example.org/feeds/rss.xml")
    assert [(e.entry_id, e.link) for e in got] == [("g1", "https://example.org/cap/1.xml"),
                                                   ("https://example.org/cap/2.xml", "https://example.org/cap/2.xml")]
    inline = f"""<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>i1</id>
      <content type="application/cap+xml">{OASIS_THUNDERSTORM.split('?>', 1)[-1]}</content></entry></feed>""".encode()
    (entry,) = parse_feed(inline, "https://example.org/")
    assert entry.link is None and b"KSTO1055887203" in entry.inline
    with pytest.raises(FeedError, match="DTD"):
        parse_feed(b'<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY x "y">]>'
                   b'<feed xmlns="http://www.w3.org/2005/Atom"><title>&x;</title></feed>', "https://example.org/")
    with pytest.raises(FeedError, match="single CAP alert"):
        parse_feed(OASIS_THUNDERSTORM.encode(), "https://example.org/")
