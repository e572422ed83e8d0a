"""Cameras say how they are pulled and why they are not playing (issue 12):
- ``cameras.transport``: the RTSP lower transport of the site file's camera (auto | tcp |
  udp; cameras/rtsp.py), so the live relay pulls the way the camera worker does;
- ``camera_health.problem`` / ``problem_detail``: why a camera has no picture, as each
  health report says it (config/vocabulary.StreamProblem; NULL while it plays).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE cameras ADD COLUMN transport text NOT NULL DEFAULT 'auto'
    CONSTRAINT cameras_transport CHECK (transport IN ('auto', 'tcp', 'udp'));
ALTER TABLE camera_health ADD COLUMN problem text, ADD COLUMN problem_detail text;
"""

DOWNGRADE = r"""
ALTER TABLE camera_health DROP COLUMN problem, DROP COLUMN problem_detail;
ALTER TABLE cameras DROP COLUMN transport;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
