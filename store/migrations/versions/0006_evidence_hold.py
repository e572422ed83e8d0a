"""Evidence attached to a case is part of its electronic archive (电子档案) and must outlive
the camera's evidence retention: ``evidence.hold`` names what holds a file (``case <id>``),
and the retention sweep leaves held files alone.  Files already attached are held here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""
from store.migrate import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE evidence ADD COLUMN hold text;
UPDATE evidence e SET hold = 'case ' || ce.case_id
FROM case_evidence ce WHERE ce.evidence_id = e.id AND e.hold IS NULL;
"""

DOWNGRADE = r"""
ALTER TABLE evidence DROP COLUMN hold;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
