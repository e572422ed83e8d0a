"""The devices worker acknowledges a message only after the transaction that handled it
committed, so a message it had handled can come again (killed between commit and
acknowledgement, a device sending twice): ``device_messages_handled`` holds the
(device, message id) of what it handled, written in the same transaction, so a copy
changes nothing. Kept as long as the broker keeps the worker's session (plus a margin),
pruned by the worker.

A speaker's answer after the hub's deadline is evidence all the same: the receipt
keeps it (``late_status``, ``late_at``) instead of dropping it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""
from store.migrate import run_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE device_messages_handled (
    device_id   text NOT NULL,
    msg_id      text NOT NULL,             -- the envelope id (an LWT: derived from status and ts)
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, msg_id)
);
CREATE INDEX device_messages_handled_at ON device_messages_handled (handled_at);

ALTER TABLE device_broadcast_receipts
    ADD COLUMN late_status text CHECK (late_status IN ('started','finished','failed','preempted')),
    ADD COLUMN late_at     timestamptz;
"""

DOWNGRADE = r"""
ALTER TABLE device_broadcast_receipts DROP COLUMN late_status, DROP COLUMN late_at;
DROP TABLE IF EXISTS device_messages_handled;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
