"""Case numbers without gaps (issue 16): a PostgreSQL sequence hands out a number even to a
transaction that then rolls back (a refused Open311 request, evidence not found, …), so the
archive had numbers that were never issued (000004, 000009, …) and a missing number looked
like a deleted case. The counter is one row updated in the case's own transaction: a
rolled-back case gives its number back. Case creation serialises on that row until commit,
which a county's case rate (hundreds a day) does not notice.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE case_number_counter (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    last  bigint NOT NULL CHECK (last >= 0)
);
-- Continue after every number the sequence ever handed out (issued or lost), never reuse one.
INSERT INTO case_number_counter (last)
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM case_number_seq;
DROP SEQUENCE case_number_seq;
"""

DOWNGRADE = r"""
CREATE SEQUENCE case_number_seq;
SELECT setval('case_number_seq', greatest(last, 1), last > 0) FROM case_number_counter;
DROP TABLE case_number_counter;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
