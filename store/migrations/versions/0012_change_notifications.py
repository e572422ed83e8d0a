"""Identity and registry changes are announced, so that the API can keep answers in memory
and drop them at once when they change:
- ``xlhub_identity``: a session ends, a user is changed or disabled, a password is set, an
  API token is revoked or a grid node's path moves — the API's principal cache
  (store.identity.PrincipalCache) is cleared. Statement triggers on those columns only (a
  failed login's counters and an API token's last use are not identity changes).
- ``xlhub_registry``: cameras, devices, grid nodes or grid membership change — the API's
  cached registry reads (api/readcache.py) are cleared.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION identity_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_identity', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_identity AFTER DELETE OR UPDATE OF expires_at, user_id ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION identity_changed();
CREATE TRIGGER users_identity AFTER DELETE OR UPDATE OF username, display_name, role, node_code, department_code,
    password_hash, must_change_password, active ON users
    FOR EACH STATEMENT EXECUTE FUNCTION identity_changed();
CREATE TRIGGER api_tokens_identity AFTER DELETE OR UPDATE OF name, role, node_code, expires_at, revoked_at
    ON api_tokens FOR EACH STATEMENT EXECUTE FUNCTION identity_changed();
CREATE TRIGGER grid_nodes_identity AFTER UPDATE OF path ON grid_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION identity_changed();

CREATE FUNCTION registry_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_registry', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER cameras_registry AFTER INSERT OR UPDATE OR DELETE ON cameras
    FOR EACH STATEMENT EXECUTE FUNCTION registry_changed();
CREATE TRIGGER devices_registry AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION registry_changed();
CREATE TRIGGER grid_nodes_registry AFTER INSERT OR UPDATE OR DELETE ON grid_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION registry_changed();
CREATE TRIGGER grid_membership_registry AFTER INSERT OR UPDATE OR DELETE ON grid_membership
    FOR EACH STATEMENT EXECUTE FUNCTION registry_changed();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS sessions_identity ON sessions;
DROP TRIGGER IF EXISTS users_identity ON users;
DROP TRIGGER IF EXISTS api_tokens_identity ON api_tokens;
DROP TRIGGER IF EXISTS grid_nodes_identity ON grid_nodes;
DROP FUNCTION IF EXISTS identity_changed();
DROP TRIGGER IF EXISTS cameras_registry ON cameras;
DROP TRIGGER IF EXISTS devices_registry ON devices;
DROP TRIGGER IF EXISTS grid_nodes_registry ON grid_nodes;
DROP TRIGGER IF EXISTS grid_membership_registry ON grid_membership;
DROP FUNCTION IF EXISTS registry_changed();
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
