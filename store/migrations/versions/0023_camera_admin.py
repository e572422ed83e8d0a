"""Cameras administered live (issue 17): the registry, not only the site file, is what the
camera workers run, so it carries everything a worker needs.
- ``cameras.analytics`` / ``cameras.recording``: the camera's ``analytics:`` and
  ``recording:`` as the site file gives them (config/camera_analytics.py,
  config/camera_recording.py), NULL for the defaults; maintenance is ``analytics.maintenance``;
- ``cameras.origin`` (0022 made it for GB/T 28181 catalogs) may also be 'api': added in the
  UI, the site sync leaves it alone, like ``devices.origin``;
- ``cameras.retired_at`` / ``retired_by``: a retired camera keeps its row (history points at it).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE cameras
    ADD COLUMN analytics  jsonb,
    ADD COLUMN recording  jsonb,
    ADD COLUMN retired_at timestamptz,
    ADD COLUMN retired_by text,
    DROP CONSTRAINT cameras_origin_check,
    ADD CONSTRAINT cameras_origin CHECK (origin IN ('site', 'api', 'gb28181'));
"""

DOWNGRADE = r"""
UPDATE cameras SET origin = 'site' WHERE origin = 'api';
ALTER TABLE cameras DROP COLUMN analytics, DROP COLUMN recording, DROP COLUMN retired_at, DROP COLUMN retired_by,
    DROP CONSTRAINT cameras_origin,
    ADD CONSTRAINT cameras_origin_check CHECK (origin IN ('site', 'gb28181'));
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
