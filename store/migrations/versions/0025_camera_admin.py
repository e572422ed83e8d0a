"""Cameras administered live (issue 17): the registry, not only the site file, is what the
camera workers run, so it carries everything a worker needs.
- ``cameras.analytics`` / ``cameras.recording``: the camera's ``analytics:`` and
  ``recording:`` as the site file gives them (config/camera_analytics.py,
  config/camera_recording.py), NULL for the defaults; maintenance is ``analytics.maintenance``;
- ``cameras.origin``: 'site' (the site sync manages it) or 'api' (added in the UI: the site
  sync leaves it alone), like ``devices.origin``;
- ``cameras.retired_at`` / ``retired_by``: a retired camera keeps its row (history points at it).

Revision ID: 0025
Revises: 0021
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0025"
down_revision = "0021"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE cameras
    ADD COLUMN analytics  jsonb,
    ADD COLUMN recording  jsonb,
    ADD COLUMN origin     text NOT NULL DEFAULT 'site' CONSTRAINT cameras_origin CHECK (origin IN ('site', 'api')),
    ADD COLUMN retired_at timestamptz,
    ADD COLUMN retired_by text;
"""

DOWNGRADE = r"""
ALTER TABLE cameras DROP COLUMN analytics, DROP COLUMN recording, DROP COLUMN origin, DROP COLUMN retired_at,
    DROP COLUMN retired_by;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
