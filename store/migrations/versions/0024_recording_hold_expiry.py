"""Holds carry their own end (录像留存期限): ``expires_at`` — when the hold lets go by itself —
and, for a case's hold, ``after_case_days`` — how long it stays once its case has finished.

Retention (cameras/recording/retention.py) releases holds past ``expires_at`` and knows nothing
of cases; the alerts layer sets ``expires_at`` when a case finishes (now + ``after_case_days``)
and clears it should the case leave the finished states. A legal hold without a case (POST
/api/recordings/holds) is made with its ``expires_at``. ``released_by`` and ``release_reason``
say who let a hold go early, and why (system:recordings when it expired).

Case holds made before this revision keep footage 90 days after their case finished (the
default of XLHUB_RECORDING_CASE_HOLD_DAYS); those of cases already finished get their end now.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE recording_holds
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN after_case_days integer CHECK (after_case_days >= 0),
    ADD COLUMN released_by text,
    ADD COLUMN release_reason text;
UPDATE recording_holds SET after_case_days = 90 WHERE case_id IS NOT NULL;
UPDATE recording_holds h SET expires_at = coalesce(c.closed_at, c.updated_at) + interval '90 days'
FROM cases c
WHERE h.case_id = c.id AND h.released_at IS NULL AND c.state IN ('closed', 'evaluated', 'rejected', 'cancelled');
CREATE INDEX recording_holds_expiry ON recording_holds (expires_at) WHERE released_at IS NULL AND expires_at IS NOT NULL;
"""

DOWNGRADE = r"""
DROP INDEX recording_holds_expiry;
ALTER TABLE recording_holds DROP COLUMN expires_at, DROP COLUMN after_case_days, DROP COLUMN released_by,
    DROP COLUMN release_reason;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
