"""Live voice (实时喊话, issue 15 item 5): a broadcast can be an operator's voice streamed
live from the console instead of a file. ``device_broadcasts.live`` marks it; its
``duration_s`` is the longest the session may last (the receipts' deadline), and the
speakers fetch ``/api/broadcasts/{id}/live.mp3`` from the API process that holds the
operator's WebRTC session (devices/README.md, "Live voice").

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08
"""
from store.migrate import run_script

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE device_broadcasts ADD COLUMN live boolean NOT NULL DEFAULT false;
"""

DOWNGRADE = r"""
ALTER TABLE device_broadcasts DROP COLUMN IF EXISTS live;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
