"""Administration in the UI, applied live: the database registry is the live truth.

- ``site_file_applied``: the hash of the site file last applied to the registry. At start the
  file is applied only when its content differs (then it wins for what it names); otherwise
  the registry as edited in the UI stands.
- ``site_sections``: the site's sections that are not rows of their own (alerting rules,
  schedules, arming windows, SLA limits), as the site file writes them, edited in the UI;
  the alerts worker reloads on ``xlhub_alerting``.
- ``grid_nodes.origin`` / ``departments.origin`` (site | api): entities created in the UI are
  kept when a changed site file is applied; departments are retired, never deleted.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE site_file_applied (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    sha256     text NOT NULL,
    file       text,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
);

CREATE TABLE site_sections (
    name       text PRIMARY KEY CHECK (name IN ('rules', 'schedules', 'arming', 'sla')),
    data       jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL
);

CREATE FUNCTION alerting_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_alerting', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER site_sections_alerting AFTER INSERT OR UPDATE OR DELETE ON site_sections
    FOR EACH STATEMENT EXECUTE FUNCTION alerting_changed();

ALTER TABLE grid_nodes ADD COLUMN origin text NOT NULL DEFAULT 'site' CHECK (origin IN ('site', 'api'));
ALTER TABLE departments ADD COLUMN origin text NOT NULL DEFAULT 'site' CHECK (origin IN ('site', 'api')),
                        ADD COLUMN retired_at timestamptz;
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS site_file_applied;
DROP TRIGGER IF EXISTS site_sections_alerting ON site_sections;
DROP TABLE IF EXISTS site_sections;
DROP FUNCTION IF EXISTS alerting_changed();
ALTER TABLE grid_nodes DROP COLUMN IF EXISTS origin;
ALTER TABLE departments DROP COLUMN IF EXISTS origin, DROP COLUMN IF EXISTS retired_at;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
