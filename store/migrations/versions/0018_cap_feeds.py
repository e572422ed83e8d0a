"""CAP feeds (issue 16): the alerts worker polls CAP Atom/RSS feeds (alerts/cap/feeds.py).
- ``cap_feeds``: each feed's conditional-GET validators (ETag, Last-Modified), when it is
  polled next, and its last error with how many polls in a row failed;
- ``cap_feed_entries``: each entry seen, once per (feed, entry id): what became of it
  (imported, duplicate, failed) with the reason, the attempts and when it is tried again.
  A failed entry is never dropped: it stays here, visible at GET /api/alerts/cap/feeds.
The imported alert's ``cap_alerts.imported_by`` is ``system:cap-feed:<name>``.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""
from store.migrate import run_script

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE cap_feeds (
    name           text PRIMARY KEY,
    url            text NOT NULL,
    etag           text,
    last_modified  text,
    polled_at      timestamptz,
    changed_at     timestamptz,
    next_poll_at   timestamptz NOT NULL DEFAULT now(),
    failures       integer NOT NULL DEFAULT 0,
    last_status    integer,
    last_error     text,
    entries        integer NOT NULL DEFAULT 0
);

CREATE TABLE cap_feed_entries (
    feed           text NOT NULL,
    entry_id       text NOT NULL,
    link           text,
    title          text,
    updated        text,
    document       bytea,
    state          text NOT NULL CHECK (state IN ('pending', 'imported', 'duplicate', 'failed', 'refused')),
    attempts       integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    reason         text,
    sender         text,
    identifier     text,
    cap_id         text REFERENCES cap_alerts(id),
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    done_at        timestamptz,
    PRIMARY KEY (feed, entry_id)
);
CREATE INDEX cap_feed_entries_due ON cap_feed_entries (next_attempt_at) WHERE state IN ('pending', 'failed');
"""

DOWNGRADE = r"""
DROP TABLE cap_feed_entries, cap_feeds;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
