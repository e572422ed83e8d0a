"""Evidence that was promised and could not be made (issue 12, item 2): an automatic event
leaves with its clip's evidence id marked pending, and a flag's clip is cut after the
answer's snapshot. When the clip then cannot be made (no keyframe in the ring, a stream the
MP4 muxer refuses, a full disk), the camera worker records why here, under the id the clip
would have had, so the event's evidence and the case's archive say so instead of showing a
clip "being recorded" forever.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE evidence_missing (
    id           text PRIMARY KEY,             -- the ULID the clip would have had
    event_id     text,
    source_kind  text NOT NULL,
    source_id    text NOT NULL,
    reason       text NOT NULL,                -- no_keyframe | remux | not_stored | … (cameras/worker.py)
    text         text NOT NULL,                -- for people: Chinese first
    captured_at  timestamptz NOT NULL,         -- where the clip would have started
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX evidence_missing_event ON evidence_missing (event_id);
"""

DOWNGRADE = r"""
DROP TABLE evidence_missing;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
