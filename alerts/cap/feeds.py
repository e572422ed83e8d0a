"""CAP feeds: warnings arrive by themselves. The alerts worker polls each CAP 1.2 Atom or
RSS feed of the site file (``cap.feeds``) and imports each new entry's alert through the
one import flow (``import_cap``), as the hub (``system:cap-feed:<name>``), audited.

- **Conditional GET**: the feed's ETag and Last-Modified are kept (table ``cap_feeds``) and
  sent back (If-None-Match / If-Modified-Since); an unchanged feed answers 304 and costs one
  small request per ``interval``. A feed that fails (network, HTTP error, not a feed) is
  polled again with backoff (``retry.first`` doubling up to ``retry.max_interval``).
- **Once per entry, once per alert**: each entry is a row of ``cap_feed_entries`` (feed,
  entry id); the alert itself is deduplicated by (sender, identifier) in ``cap_alerts``, so
  the same warning in two feeds, or in a feed that re-lists it, is one case.
- **Nothing lost**: an entry whose document cannot be fetched is ``failed`` and tried again
  with backoff; one the hub refuses (not CAP, a bad signature, expired, outside the grid) is
  ``refused`` with the reason and tried again when the feed changes the entry (its
  ``updated`` or link). Both are audited (outcome ``failed``, detail ``state``) and listed at
  ``GET /api/alerts/cap/feeds``.
- **Idle costs nothing**: the thread sleeps until the next feed or entry is due (at most
  ``CONFIG_CHECK_S``, to notice a changed site file); without feeds it touches nothing.

Entries carry their alert either inline (an ``<alert>`` in the entry, as some Atom feeds
do) or by link (Atom ``<link>``: the one typed ``application/cap+xml`` first, else
``enclosure``/``alternate``; RSS ``<enclosure>`` or ``<link>``)."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urljoin, urlsplit

import httpx
import psycopg
from lxml import etree

import xmlsafe

from alerts.actor import Actor
from alerts.cap.parse import NS as CAP_NS
from alerts.cap.parse import CapError
from alerts.cap.service import import_cap
from alerts.cases.models import CaseError
from alerts.config import AlertsConfig
from alerts.registry import RegistryView
from config.alerting import CapFeed
from devices.broadcast import Voice
from store import audit
from store.backoff import Schedule

log = logging.getLogger(__name__)

ATOM = "http://www.w3.org/2005/Atom"
MAX_FEED_BYTES = 4 << 20
MAX_ALERT_BYTES = 1 << 20
CONFIG_CHECK_S = 60.0
USER_AGENT = "xlhub-cap-feeds/1"


class FeedError(Exception):
    """A feed or a document that could not be had; the message says why (English detail)."""


@dataclass
class Entry:
    entry_id: str
    title: str | None
    updated: str | None
    link: str | None
    inline: bytes | None = None        # the <alert> carried in the entry itself


def actor_for(feed_name: str) -> Actor:
    return Actor.system(f"cap-feed:{feed_name}")


# ---------------------------------------------------------------------------- feed documents

def _t(el, path: str, ns: dict | None = None) -> str | None:
    found = el.find(path, ns)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def parse_feed(data: bytes, base_url: str) -> list[Entry]:
    """The entries of an Atom 1.0 or RSS 2.0 document; raises FeedError naming the problem."""
    try:        # the hub's one XML reader: any declared encoding, no DTD, no entities, no network
        root = xmlsafe.parse(data, max_bytes=MAX_FEED_BYTES)
    except xmlsafe.XmlRefused as exc:
        raise FeedError(f"the feed is refused: {exc}") from None
    out: list[Entry] = []
    if root.tag == f"{{{ATOM}}}feed":
        ns = {"a": ATOM}
        for e in root.findall("a:entry", ns):
            links = e.findall("a:link", ns)
            link = _pick_link(links)
            inline = e.find(f".//{{{CAP_NS}}}alert")
            entry_id = _t(e, "a:id", ns) or link
            if not entry_id:
                continue
            out.append(Entry(entry_id, _t(e, "a:title", ns), _t(e, "a:updated", ns),
                             urljoin(base_url, link) if link else None,
                             etree.tostring(inline, encoding="utf-8", xml_declaration=True) if inline is not None
                             else None))
        return out
    if root.tag == "rss":
        for item in root.findall("channel/item"):
            enclosure = next((x.get("href") or x.get("url") for x in item.findall("enclosure")
                              if "cap" in (x.get("type") or "") or "xml" in (x.get("type") or "")), None)
            link = enclosure or _t(item, "link")
            inline = item.find(f".//{{{CAP_NS}}}alert")
            entry_id = _t(item, "guid") or link
            if not entry_id:
                continue
            out.append(Entry(entry_id, _t(item, "title"), _t(item, "pubDate"), urljoin(base_url, link) if link else None,
                             etree.tostring(inline, encoding="utf-8", xml_declaration=True) if inline is not None
                             else None))
        return out
    if root.tag == f"{{{CAP_NS}}}alert":
        raise FeedError("the URL serves a single CAP alert, not an Atom/RSS feed")
    raise FeedError(f"not an Atom or RSS feed: the root element is {root.tag[:80]!r}")


def _pick_link(links) -> str | None:
    def rank(el) -> int:
        kind, rel = (el.get("type") or "").lower(), (el.get("rel") or "alternate").lower()
        if "cap" in kind:
            return 0
        if rel == "enclosure":
            return 1
        return 2 if rel == "alternate" else 3
    usable = [el for el in links if el.get("href")]
    return min(usable, key=rank).get("href") if usable else None


# ---------------------------------------------------------------------------- the poller

class FeedPoller:
    """The feeds of the site file, polled in one thread of the alerts worker.

        poller = FeedPoller(pool, config, registry, voice)
        poller.run(stop)             # the worker's thread; poll_due() once in tests
    """

    def __init__(self, pool, config: Callable[[], AlertsConfig], registry: RegistryView, voice: Voice | None,
                 *, client: httpx.Client | None = None) -> None:
        self.pool = pool
        self.config = config
        self.registry = registry
        self.voice = voice
        self.client = client or httpx.Client(headers={"User-Agent": USER_AGENT}, follow_redirects=True,
                                             trust_env=False)
        self.wake = threading.Event()
        self.stats = {"polls": 0, "not_modified": 0, "imported": 0, "failed": 0, "refused": 0}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                wait = self.poll_due()
            except Exception:
                log.exception("CAP feeds: polling failed")
                wait = 10.0
            self.wake.wait(max(0.05, min(wait, CONFIG_CHECK_S)))
            self.wake.clear()
        self.client.close()

    def poll_due(self, now: datetime | None = None) -> float:
        """Poll the feeds and retry the entries that are due; returns the seconds until the
        next thing is due."""
        feeds = self.config().site.cap.feeds
        if not feeds:
            return CONFIG_CHECK_S
        now = now or datetime.now(UTC)
        states = self._states(feeds, now)
        for feed in feeds:
            if states[feed.name]["next_poll_at"] <= now:
                self.poll_feed(feed, now)
        for feed in feeds:
            self.retry_entries(feed, now)
        with self.pool.connection(timeout=10) as conn:
            row = conn.execute(
                """SELECT extract(epoch FROM least(
                       (SELECT min(next_poll_at) FROM cap_feeds WHERE name = ANY(%(n)s)),
                       (SELECT min(next_attempt_at) FROM cap_feed_entries
                        WHERE feed = ANY(%(n)s) AND state IN ('pending', 'failed'))) - now())::float8 AS s""",
                {"n": [f.name for f in feeds]}).fetchone()
        return CONFIG_CHECK_S if row["s"] is None else max(0.0, row["s"])

    def _states(self, feeds: list[CapFeed], now: datetime) -> dict[str, dict]:
        with self.pool.connection(timeout=10) as conn:
            for feed in feeds:
                # A feed whose URL changed starts afresh (its validators belong to the old one).
                conn.execute(
                    """INSERT INTO cap_feeds (name, url, next_poll_at) VALUES (%s, %s, %s)
                       ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, etag = NULL, last_modified = NULL,
                           next_poll_at = EXCLUDED.next_poll_at, failures = 0
                       WHERE cap_feeds.url IS DISTINCT FROM EXCLUDED.url""", (feed.name, feed.url, now))
            rows = conn.execute("SELECT * FROM cap_feeds WHERE name = ANY(%s)", ([f.name for f in feeds],)).fetchall()
        return {r["name"]: r for r in rows}

    # -- the feed document ------------------------------------------------------------------
    def poll_feed(self, feed: CapFeed, now: datetime) -> str:
        """One conditional GET of the feed; new entries are recorded and imported. Returns
        what happened: not_modified | changed | failed."""
        with self.pool.connection(timeout=10) as conn:
            state = conn.execute("SELECT * FROM cap_feeds WHERE name = %s", (feed.name,)).fetchone()
        headers = {"Accept": "application/atom+xml, application/rss+xml, application/xml;q=0.9, */*;q=0.1"}
        if state["etag"]:
            headers["If-None-Match"] = state["etag"]
        if state["last_modified"]:
            headers["If-Modified-Since"] = state["last_modified"]
        self.stats["polls"] += 1
        status = None
        try:
            status, body, response_headers = self._get(feed.url, headers, feed.timeout.total_seconds(),
                                                       MAX_FEED_BYTES, allow_304=True)
            entries = [] if status == 304 else parse_feed(body, feed.url)
        except FeedError as exc:
            failures = state["failures"] + 1
            delay = Schedule.doubling(feed.retry.first.total_seconds(),
                                      feed.retry.max_interval.total_seconds()).delay(failures)
            with self.pool.connection(timeout=10) as conn:
                conn.execute("""UPDATE cap_feeds SET polled_at = %s, failures = %s, last_status = %s, last_error = %s,
                                    next_poll_at = %s WHERE name = %s""",
                             (now, failures, status, str(exc)[:1000], now + timedelta(seconds=delay), feed.name))
            log.warning("CAP feed %s: %s (failure %d in a row; next poll in %.0f s)", feed.name, exc, failures, delay)
            return "failed"
        next_poll = now + feed.interval
        if status == 304:
            self.stats["not_modified"] += 1
            with self.pool.connection(timeout=10) as conn:
                conn.execute("""UPDATE cap_feeds SET polled_at = %s, failures = 0, last_status = 304, last_error = NULL,
                                    next_poll_at = %s WHERE name = %s""", (now, next_poll, feed.name))
            return "not_modified"
        with self.pool.connection(timeout=10) as conn:
            for e in entries:
                # New: pending now. Known, and the feed changed it (updated, link): tried again.
                conn.execute(
                    """INSERT INTO cap_feed_entries (feed, entry_id, link, title, updated, document, state,
                           next_attempt_at)
                       VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s)
                       ON CONFLICT (feed, entry_id) DO UPDATE
                       SET link = EXCLUDED.link, title = EXCLUDED.title, updated = EXCLUDED.updated,
                           document = EXCLUDED.document, state = 'pending',
                           next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0
                       WHERE (cap_feed_entries.updated, cap_feed_entries.link, cap_feed_entries.document)
                             IS DISTINCT FROM (EXCLUDED.updated, EXCLUDED.link, EXCLUDED.document)""",
                    (feed.name, e.entry_id[:1000], e.link, (e.title or "")[:500] or None, e.updated, e.inline, now))
            conn.execute(
                """UPDATE cap_feeds SET polled_at = %s, changed_at = %s, failures = 0, last_status = %s, last_error = NULL,
                       etag = %s, last_modified = %s, next_poll_at = %s, entries = %s WHERE name = %s""",
                (now, now, status, response_headers.get("etag"), response_headers.get("last-modified"), next_poll,
                 len(entries), feed.name))
        self.retry_entries(feed, now)
        return "changed"

    # -- the entries ------------------------------------------------------------------------
    def retry_entries(self, feed: CapFeed, now: datetime) -> int:
        with self.pool.connection(timeout=10) as conn:
            due = conn.execute("""SELECT * FROM cap_feed_entries WHERE feed = %s AND state IN ('pending', 'failed')
                                  AND next_attempt_at <= %s ORDER BY first_seen_at, entry_id""",
                               (feed.name, now)).fetchall()
        for entry in due:
            self.import_entry(feed, entry, now)
        return len(due)

    def import_entry(self, feed: CapFeed, entry: dict, now: datetime) -> str:
        try:
            if entry["document"] is not None:
                raw = bytes(entry["document"])
            elif entry["link"]:
                _, raw, _ = self._get(entry["link"], {"Accept": "application/cap+xml, application/xml;q=0.9"},
                                      feed.timeout.total_seconds(), MAX_ALERT_BYTES)
            else:
                raise CapError("条目没有预警文档 (the entry has neither a link nor an inline <alert>)")
        except FeedError as exc:
            return self._fail(feed, entry, now, "failed", f"预警文档获取失败 (the alert could not be fetched: {exc})")
        except CapError as exc:
            return self._fail(feed, entry, now, "refused", str(exc))
        actor = actor_for(feed.name)
        try:
            with self.pool.connection(timeout=10) as conn:
                self.registry.maybe_refresh(conn)
                with conn.transaction():
                    result = import_cap(conn, self.config(), self.registry, raw, actor, now,
                                        allow_non_actual=feed.allow_non_actual, voice=self.voice)
                    # The entry's own alert seen again (the feed re-dated the entry) stays imported.
                    state = "duplicate" if result.action == "duplicate" and result.cap_id != entry["cap_id"] \
                        else "imported"
                    conn.execute(
                        """UPDATE cap_feed_entries SET state = %s, attempts = attempts + 1, reason = %s, cap_id = %s,
                               next_attempt_at = NULL, done_at = %s, sender = %s, identifier = %s
                           WHERE feed = %s AND entry_id = %s""",
                        (state, result.reason, result.cap_id, now,
                         *_ids(conn, result.cap_id), feed.name, entry["entry_id"]))
                    audit.record(conn, audit.AuditEntry(
                        actor=actor.name, actor_kind="system", action="cap.import", target=result.case_number or "-",
                        detail={"feed": feed.name, "entry": entry["entry_id"], "link": entry["link"],
                                "action": result.action, "cap_id": result.cap_id, "broadcast_id": result.broadcast_id,
                                "areas": result.areas, "speakers": result.speakers}))
        except (CapError, CaseError) as exc:
            reason = exc.message if isinstance(exc, CaseError) else str(exc)
            return self._fail(feed, entry, now, "refused", reason)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            return self._fail(feed, entry, now, "failed", f"数据库暂不可用 (the database is unavailable: "
                                                          f"{type(exc).__name__})")
        except Exception as exc:      # a bug must not lose the entry: kept, retried
            log.exception("CAP feed %s: entry %s could not be imported", feed.name, entry["entry_id"])
            return self._fail(feed, entry, now, "failed", f"导入出错 (import failed: {type(exc).__name__}: {exc})")
        self.stats["imported"] += 1
        log.info("CAP feed %s: entry %s %s (case %s)", feed.name, entry["entry_id"], result.action, result.case_number)
        return state

    def _fail(self, feed: CapFeed, entry: dict, now: datetime, state: str, reason: str) -> str:
        attempts = entry["attempts"] + 1
        delay = Schedule.doubling(feed.retry.first.total_seconds(),
                                  feed.retry.max_interval.total_seconds()).delay(attempts)
        # failed: tried again with backoff; refused: when the feed changes the entry.
        retry_at = now + timedelta(seconds=delay) if state == "failed" else None
        self.stats[state] += 1
        with self.pool.connection(timeout=10) as conn:
            conn.execute("""UPDATE cap_feed_entries SET state = %s, attempts = %s, reason = %s, next_attempt_at = %s
                            WHERE feed = %s AND entry_id = %s""",
                         (state, attempts, reason[:2000], retry_at, feed.name, entry["entry_id"]))
            audit.record(conn, audit.AuditEntry(
                actor=actor_for(feed.name).name, actor_kind="system", action="cap.import", outcome="failed",
                target="-", detail={"feed": feed.name, "entry": entry["entry_id"], "link": entry["link"],
                                    "state": state, "reason": reason[:1000], "attempts": attempts}))
        log.warning("CAP feed %s: entry %s %s: %s", feed.name, entry["entry_id"], state, reason)
        return state

    # -- HTTP -------------------------------------------------------------------------------
    def _get(self, url: str, headers: dict, timeout: float, limit: int,
             allow_304: bool = False) -> tuple[int, bytes, httpx.Headers]:
        if urlsplit(url).scheme not in ("http", "https"):
            raise FeedError(f"only http(s) links are followed, not {url[:80]!r}")
        try:
            with self.client.stream("GET", url, headers=headers, timeout=timeout) as r:
                if r.status_code == 304 and allow_304:
                    return 304, b"", r.headers
                if r.status_code != 200:
                    raise FeedError(f"HTTP {r.status_code} from {_safe(url)}")
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise FeedError(f"{_safe(url)} is larger than {limit} bytes")
                return 200, bytes(body), r.headers
        except httpx.HTTPError as exc:
            raise FeedError(f"{type(exc).__name__} from {_safe(url)}: {exc}") from None


def _safe(url: str) -> str:
    from config.urls import redact_url
    return redact_url(url)[:200]


def _ids(conn: psycopg.Connection, cap_id: str | None) -> tuple[str | None, str | None]:
    if cap_id is None:
        return None, None
    row = conn.execute("SELECT sender, identifier FROM cap_alerts WHERE id = %s", (cap_id,)).fetchone()
    return (row["sender"], row["identifier"]) if row else (None, None)


def feeds_status(conn: psycopg.Connection, names: list[str], limit: int = 50) -> list[dict]:
    """Each configured feed's state and its entries not imported (failed, refused), newest first."""
    out = []
    for name in names:
        state = conn.execute("SELECT * FROM cap_feeds WHERE name = %s", (name,)).fetchone() or {"name": name}
        counts = {r["state"]: r["n"] for r in conn.execute(
            "SELECT state, count(*) AS n FROM cap_feed_entries WHERE feed = %s GROUP BY state", (name,))}
        problems = conn.execute(
            """SELECT entry_id, link, title, state, attempts, reason, next_attempt_at, first_seen_at
               FROM cap_feed_entries WHERE feed = %s AND state IN ('failed', 'refused')
               ORDER BY first_seen_at DESC LIMIT %s""", (name, limit)).fetchall()
        out.append({**dict(state), "counts": counts, "problems": problems})
    return out
