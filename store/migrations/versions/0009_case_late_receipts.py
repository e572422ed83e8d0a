"""A speaker's answer after the broadcast's deadline (``late_status``, revision 0007)
amended the devices layer's report but not the case the report had been attached to:
the case's archive still said the speaker did not answer. The alerts engine's scan now
puts a note on the case for each such late answer; ``case_broadcast_late_notes`` holds
which (broadcast, speaker) answers it has noted, written in the transaction of the note,
so a rescan or a restarted engine notes none twice.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""
from store.migrate import run_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE case_broadcast_late_notes (
    broadcast_id   text NOT NULL REFERENCES case_broadcasts(broadcast_id),
    speaker_id     text NOT NULL,
    case_id        text NOT NULL REFERENCES cases(id),
    late_status    text NOT NULL,              -- the late answer noted (finished | failed | preempted)
    transition_id  bigint REFERENCES case_transitions(id),   -- the note; NULL: the attached report showed it already
    noted_at       timestamptz NOT NULL,
    PRIMARY KEY (broadcast_id, speaker_id)
);
-- The scan looks for late answers not noted yet: few receipts ever have one.
CREATE INDEX device_broadcast_receipts_late ON device_broadcast_receipts (broadcast_id) WHERE late_status IS NOT NULL;
"""

DOWNGRADE = r"""
DROP INDEX IF EXISTS device_broadcast_receipts_late;
DROP TABLE IF EXISTS case_broadcast_late_notes;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
