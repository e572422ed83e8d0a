"""A broadcast can be stopped while it plays, and ends when its warning expires (issue 16):

- ``device_broadcasts.ends_at`` / ``end_reason``: stop playing at this time (a CAP
  warning's ``<expires>``), and the words the receipts say then;
- ``stop_requested_at`` / ``stopped_by`` / ``stop_reason``: who stopped it, when and why
  (an operator, a CAP Cancel or superseding Update, the end time);
- state ``stopped`` (已停止), receipt status ``stopped`` (已停止播放) and the command state
  ``stopped``: a speaker told to stop answers its play command with it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08
"""
from store.migrate import run_script

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE device_broadcasts
    ADD COLUMN ends_at           timestamptz,
    ADD COLUMN end_reason        text,
    ADD COLUMN stop_requested_at timestamptz,
    ADD COLUMN stopped_by        text,
    ADD COLUMN stop_reason       text,
    DROP CONSTRAINT device_broadcasts_state_check,
    ADD CONSTRAINT device_broadcasts_state_check
        CHECK (state IN ('scheduled','sending','playing','done','partial','failed','cancelled','no_speakers',
                         'stopped'));
CREATE INDEX device_broadcasts_ends ON device_broadcasts (ends_at)
    WHERE state = 'playing' AND stop_requested_at IS NULL AND ends_at IS NOT NULL;
ALTER TABLE device_broadcast_receipts
    DROP CONSTRAINT device_broadcast_receipts_status_check,
    ADD CONSTRAINT device_broadcast_receipts_status_check
        CHECK (status IN ('pending','sent','accepted','started','finished','failed','preempted','rejected','expired',
                          'offline','cancelled','stopped'));
ALTER TABLE device_commands
    DROP CONSTRAINT device_commands_state_check,
    ADD CONSTRAINT device_commands_state_check
        CHECK (state IN ('pending','sent','accepted','progress','finished','failed','rejected','preempted',
                         'expired','stopped'));
"""

DOWNGRADE = r"""
UPDATE device_commands SET state = 'preempted' WHERE state = 'stopped';
ALTER TABLE device_commands DROP CONSTRAINT device_commands_state_check,
    ADD CONSTRAINT device_commands_state_check
        CHECK (state IN ('pending','sent','accepted','progress','finished','failed','rejected','preempted',
                         'expired'));
UPDATE device_broadcast_receipts SET status = 'cancelled' WHERE status = 'stopped';
ALTER TABLE device_broadcast_receipts DROP CONSTRAINT device_broadcast_receipts_status_check,
    ADD CONSTRAINT device_broadcast_receipts_status_check
        CHECK (status IN ('pending','sent','accepted','started','finished','failed','preempted','rejected','expired',
                          'offline','cancelled'));
UPDATE device_broadcasts SET state = 'cancelled' WHERE state = 'stopped';
DROP INDEX IF EXISTS device_broadcasts_ends;
ALTER TABLE device_broadcasts DROP CONSTRAINT device_broadcasts_state_check,
    ADD CONSTRAINT device_broadcasts_state_check
        CHECK (state IN ('scheduled','sending','playing','done','partial','failed','cancelled','no_speakers')),
    DROP COLUMN ends_at, DROP COLUMN end_reason, DROP COLUMN stop_requested_at, DROP COLUMN stopped_by,
    DROP COLUMN stop_reason;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
