"""Exports are durable jobs (导出任务, issue 13): a row per export, written by the API when it
is asked for and run by the export worker of any API process (cameras/recording/jobs.py),
which picks up queued jobs and those whose worker died (its heartbeat stopped) when it starts.

state: queued → running → done | failed; done → expired once its file is deleted after
XLHUB_RECORDING_EXPORT_KEEP_HOURS. ``provenance`` is the export's record (segments, chain,
gaps) known when it was planned; ``chain`` the chain position it came from.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE recording_exports (
    id              text PRIMARY KEY,
    camera_id       text NOT NULL,
    start_at        timestamptz NOT NULL,
    end_at          timestamptz NOT NULL CHECK (end_at > start_at),
    reason          text NOT NULL,
    requested_by    text NOT NULL,
    requester_kind  text NOT NULL,
    requester_role  text,
    requester_node  text,
    source_ip       text,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'expired')),
    bytes_done      bigint NOT NULL DEFAULT 0,
    bytes_total     bigint NOT NULL,
    sha256          text,
    bytes           bigint,
    chain           jsonb NOT NULL,
    provenance      jsonb NOT NULL,
    result          jsonb,
    path            text,
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    worker          text,
    heartbeat_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    expires_at      timestamptz
);
CREATE INDEX recording_exports_waiting ON recording_exports (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX recording_exports_expiry ON recording_exports (expires_at) WHERE state = 'done';
CREATE INDEX recording_exports_camera ON recording_exports (camera_id, created_at DESC);
"""

DOWNGRADE = r"""
DROP TABLE recording_exports;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
