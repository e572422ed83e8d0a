"""The warnings the devices worker raises once per episode (a drone's battery_low and
battery_critical until it lands or the battery is back, link_lost until it is heard
again) were "already raised" only in the worker's memory: a restarted worker raised them
a second time for the same episode. ``device_open_warnings`` holds the open ones, written
in the transaction that raised (or ended) them; the worker starts from it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""
from store.migrate import run_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE device_open_warnings (
    device_id   text NOT NULL REFERENCES devices(id),
    warning     text NOT NULL,             -- battery_low | battery_critical | link_lost
    raised_at   timestamptz NOT NULL,
    PRIMARY KEY (device_id, warning)
);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS device_open_warnings;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
