"""Logins throttled without locking the owner out (issue 18):
- ``login_failures``: every failed login by the name that was typed — known or not, so an
  unknown name is throttled exactly like a real one and the answer tells nothing — and by
  the known browser it came from (NULL: a client the account has never logged in from).
  Throttling counts a client class at a time, so guesses from elsewhere never lock out the
  owner at their own browser. Kept 30 days (pruned by the API): the owner is shown the
  failures since their last login.
- ``known_devices``: browsers a user has logged in from (the HttpOnly ``xlhub_device``
  cookie, stored as SHA-256), one row per browser and user (a control-room PC is shared).
- ``users.last_login_at``; the per-account lock (failed_logins, locked_until) is gone.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE login_failures (
    id           bigserial PRIMARY KEY,
    username     text NOT NULL,
    device_hash  bytea,
    at           timestamptz NOT NULL DEFAULT now(),
    source_ip    text
);
CREATE INDEX login_failures_name ON login_failures (username, at);
CREATE INDEX login_failures_at ON login_failures (at);

CREATE TABLE known_devices (
    token_hash   bytea NOT NULL,
    user_id      bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_hash, user_id)
);
CREATE INDEX known_devices_user ON known_devices (user_id);

ALTER TABLE users ADD COLUMN last_login_at timestamptz,
                  DROP COLUMN failed_logins,
                  DROP COLUMN locked_until;
"""

DOWNGRADE = r"""
ALTER TABLE users DROP COLUMN IF EXISTS last_login_at,
                  ADD COLUMN IF NOT EXISTS failed_logins integer NOT NULL DEFAULT 0,
                  ADD COLUMN IF NOT EXISTS locked_until timestamptz;
DROP TABLE IF EXISTS known_devices, login_failures;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
