"""GB/T 28181 admission with a grid placement (issue 14 item 7): an administrator admitting a
device may choose the grid node its channels go to (``gb_devices.grid_code``); the site file's
channel rules still win, its device and civil-code rules yield to this choice.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE gb_devices ADD COLUMN grid_code text REFERENCES grid_nodes(code);
"""

DOWNGRADE = r"""
ALTER TABLE gb_devices DROP COLUMN IF EXISTS grid_code;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
