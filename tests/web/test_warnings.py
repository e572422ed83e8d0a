"""The warning page (预警, issue 16) in Debian's chromium under the hub's own CSP: a warning that
arrived by a CAP feed is in the history with its case; a pasted zh-CN warning is previewed
(matched villages on the list and the map, the text to be spoken) and confirmed; a warning
for another township is shown as outside the caller's area and cannot be confirmed."""
from __future__ import annotations

import uuid

from alerts.cap.feeds import FeedPoller
from alerts.config import load_config
from alerts.registry import RegistryView
from store.db import connect, open_pool
from tests.alerts.cap_feed_samples import FeedServer, national
from tests.alerts.conftest import write_site


def _poll_feed_once(db_url: str, site, feed_server: FeedServer) -> None:
    pool = open_pool(db_url, max_size=2, name="test-cap-feeds")
    try:
        pool.wait(timeout=30)
        poller = FeedPoller(pool, lambda: load_config(site), RegistryView(), None)
        poller.poll_due()
        poller.client.close()
    finally:
        pool.close()


def test_warning_page_previews_confirms_and_lists_feed_warnings(ui_for, live_db, tmp_path, shots):
    tag = uuid.uuid4().hex[:8]
    fed_id, pasted_id, other_id = (f"51019941600000_{tag}_{k}" for k in ("feed", "paste", "other"))
    with FeedServer() as server:
        server.put("/cap/ice.xml", national(fed_id, event="道路结冰", colour="黄色", geocode="510199101202", area="桃园村"))
        server.feed([(f"urn:{tag}:ice", "道路结冰黄色预警", "/cap/ice.xml")], '"w1"')
        site = write_site(tmp_path / "site.yaml", mutate=lambda d: d.setdefault("cap", {}).update(
            feeds=[{"name": "province-12379", "url": f"{server.url}/feed.atom"}]))
        _poll_feed_once(live_db, site, server)
    with connect(live_db) as conn:
        entry = conn.execute("SELECT state, reason FROM cap_feed_entries WHERE entry_id = %s", (f"urn:{tag}:ice",)).fetchone()
    assert entry["state"] == "imported", entry

    ui = ui_for("ds-dispatcher", bypass_csp=False)
    p = ui.page
    p.click("#nav-warnings")
    p.wait_for_selector("#cap-history > *", timeout=15000)
    row = p.query_selector(f'#cap-history tr[data-identifier="{fed_id}"]')
    assert row is not None, p.inner_text("#cap-history")
    assert "订阅源 province-12379" in row.inner_text() and "道路结冰" in row.inner_text()

    # Paste a warning for 东山镇: its two villages, their speakers, the text, the map.
    p.fill("#cap-xml", national(pasted_id))
    p.click("#cap-preview")
    p.wait_for_selector('#cap-preview-result[data-outcome="create"] #cap-villages li')
    villages = p.eval_on_selector_all("#cap-villages li", "els => els.map(e => e.dataset.code)")
    assert villages == ["510199101201", "510199101202"]
    assert "东山村广播" in p.inner_text("#cap-villages") and "桃园村广播" in p.inner_text("#cap-villages")
    assert p.inner_text("#cap-text").startswith("示范县气象台发布暴雨橙色预警信号。")
    assert sorted(p.eval_on_selector_all("#cap-map path.matched", "els => els.map(e => e.dataset.code)")) == villages
    assert p.eval_on_selector_all("#cap-map path:not(.matched)", "els => els.length") == 0   # 东山镇 has two villages
    p.screenshot(path=str(shots / "warnings-preview.png"), full_page=True)
    with connect(live_db) as conn:       # a preview writes nothing but its audit record
        assert conn.execute("SELECT count(*) AS n FROM cap_alerts WHERE identifier = %s", (pasted_id,)).fetchone()["n"] == 0
        audited = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'cap.preview' AND target = %s",
                               (pasted_id,)).fetchone()
    assert audited["actor"] == "ds-dispatcher" and audited["detail"]["speakers"] == 2

    assert p.is_enabled("#cap-confirm")
    p.click("#cap-confirm")
    p.wait_for_selector('#cap-result[data-outcome="created"] #cap-result-case')
    number = p.inner_text("#cap-result-case")
    row = p.wait_for_selector(f'#cap-history tr[data-identifier="{pasted_id}"]')
    assert number in row.inner_text() and "ds-dispatcher" in row.inner_text()

    # 西河乡 is another township's: said so, and nothing to confirm.
    p.fill("#cap-xml", national(other_id, geocode="510199201", area="西河乡"))
    p.click("#cap-preview")
    p.wait_for_selector("#cap-problems li")
    assert "超出您的管辖范围" in p.inner_text("#cap-problems")
    assert not p.is_enabled("#cap-confirm")
    assert "西河村" not in p.inner_text("#cap-preview-result")

    # Not CAP at all: the reason, not a preview.
    p.fill("#cap-xml", "<alert>not really CAP</alert>")
    p.click("#cap-preview")
    p.wait_for_selector('#cap-preview-result[data-outcome="refused"] .error-box')
    assert "CAP 1.2 namespace" in p.inner_text("#cap-preview-result")
    p.screenshot(path=str(shots / "warnings-history.png"), full_page=True)
    violations = [m for m in ui.console if "Content Security Policy" in m or "Refused to" in m]
    assert not violations and not ui.errors, (violations, ui.errors)
