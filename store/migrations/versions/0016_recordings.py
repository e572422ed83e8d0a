"""Recordings (录像, issue 13): the index of every camera's recorded segments, chained for
tamper evidence, and the holds that keep footage past its retention.

``recording_segments`` — one row per segment file (fragmented MP4, the camera's own codec,
cameras/recording/): "what do we have for camera X between t0 and t1" is one range scan of
``(camera_id, start_at)``. Gaps are rows that do not meet. Each row's ``link`` is the SHA-256
of the previous row's link, the camera, the sequence number, the times, the file's SHA-256
and its size: a removed, replaced or edited segment breaks the chain from there on
(``xlhub recordings verify``). A row outlives its file: retention and the disk quota remove
the file and mark the row ``pruned_at`` (why in ``pruned_why``), so the chain still verifies.

``recording_holds`` — ranges of a camera that must be kept (a case's evidence, a legal hold):
retention and the quota skip segments that overlap an active hold.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE recording_segments (
    camera_id   text NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz NOT NULL,
    seq         bigint NOT NULL,                -- per camera: 1, 2, 3 … the chain's order
    stream      text NOT NULL,                  -- main | sub: the stream the worker reads
    path        text,                           -- relative to the recordings root; NULL once pruned
    bytes       bigint NOT NULL,
    codec       text NOT NULL,
    width       integer,
    height      integer,
    keyframes   real[] NOT NULL,                -- seconds after start_at of each keyframe
    packets     integer NOT NULL,
    sha256      text NOT NULL,
    prev_link   text NOT NULL,                  -- the previous segment's link ('' for a camera's first)
    link        text NOT NULL,
    pruned_at   timestamptz,
    pruned_why  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (camera_id, start_at),
    CHECK (end_at >= start_at)
);
SELECT create_hypertable('recording_segments', by_range('start_at', INTERVAL '7 days'));
CREATE INDEX recording_segments_seq ON recording_segments (camera_id, seq DESC);

CREATE TABLE recording_holds (
    id          bigserial PRIMARY KEY,
    camera_id   text NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz NOT NULL,
    reason      text NOT NULL,
    case_id     text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    CHECK (end_at > start_at)
);
CREATE INDEX recording_holds_camera ON recording_holds (camera_id, start_at) WHERE released_at IS NULL;
"""

DOWNGRADE = r"""
DROP TABLE recording_holds;
DROP TABLE recording_segments;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
