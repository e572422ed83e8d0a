"""Views of the versioned grid membership, so that "which grid is this source in (now, or
when it captured that picture)" is written once instead of in every query that scopes a
camera, a device or a file by the grid tree:

- ``membership_paths``: every membership row with its node's path (root → node);
- ``source_grid``: the current one of each source (``valid_to IS NULL``);
- ``sources``: every camera and device with its kind, name, position, active flag and
  current grid (the registry caches of ingest, alerts and the devices worker read it).

Plain views: PostgreSQL inlines them into the queries that use them, so the indexes on
grid_membership are used as before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE VIEW membership_paths AS
SELECT m.source_kind, m.source_id, m.grid_code, n.path AS grid_path, m.valid_from, m.valid_to
FROM grid_membership m JOIN grid_nodes n ON n.code = m.grid_code;

CREATE VIEW source_grid AS
SELECT source_kind, source_id, grid_code, grid_path, valid_from
FROM membership_paths WHERE valid_to IS NULL;

CREATE VIEW sources AS
SELECT d.id, d.kind, d.name, d.lat, d.lon, d.active, g.grid_code, g.grid_path
FROM devices d LEFT JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
UNION ALL
SELECT c.id, 'camera', c.name, c.lat, c.lon, c.active, g.grid_code, g.grid_path
FROM cameras c LEFT JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id;
"""

DOWNGRADE = r"""
DROP VIEW IF EXISTS sources;
DROP VIEW IF EXISTS source_grid;
DROP VIEW IF EXISTS membership_paths;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
