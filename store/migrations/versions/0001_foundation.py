"""Foundation schema: grid tree, registry with versioned grid membership, identity,
hash-chained audit log, and the telemetry/event hypertables.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from store.migrate import run_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- 网格 tree. `path` holds the codes from the root to the node itself, so "is X inside
-- the subtree of N" is `path @> ARRAY[N]` (GIN-indexed) whatever characters codes use.
CREATE TABLE grid_nodes (
    code        text PRIMARY KEY,
    name        text NOT NULL,
    level       text NOT NULL CHECK (level IN ('county','township','village','community','grid')),
    parent_code text REFERENCES grid_nodes(code),
    path        text[] NOT NULL,
    center_lat  double precision,
    center_lon  double precision,
    boundary    jsonb,
    -- Grids are re-drawn (动态调整); a node dropped from the site file is retired, never
    -- deleted, because history still points at it.
    retired_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX grid_nodes_path_gin ON grid_nodes USING gin (path);

CREATE TABLE cameras (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    rtsp_url        text,          -- never with credentials: those are in credentials_ref
    substream_url   text,
    onvif           jsonb,
    credentials_ref text,
    lat             double precision,
    lon             double precision,
    tags            text[] NOT NULL DEFAULT '{}',
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('door','speaker','drone','radio')),
    name        text NOT NULL,
    lat         double precision,
    lon         double precision,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Which grid a camera or device belongs to, versioned: moving it closes one row and
-- opens another, so events keep the grid they happened in.
CREATE TABLE grid_membership (
    id          bigserial PRIMARY KEY,
    source_kind text NOT NULL CHECK (source_kind IN ('camera','device')),
    source_id   text NOT NULL,
    grid_code   text NOT NULL REFERENCES grid_nodes(code),
    valid_from  timestamptz NOT NULL DEFAULT now(),
    valid_to    timestamptz,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE UNIQUE INDEX grid_membership_current ON grid_membership (source_kind, source_id) WHERE valid_to IS NULL;
CREATE INDEX grid_membership_history ON grid_membership (source_kind, source_id, valid_from DESC);

CREATE TABLE departments (
    code       text PRIMARY KEY,
    name       text NOT NULL,
    node_code  text NOT NULL REFERENCES grid_nodes(code)
);

-- 一人一密码: one account per person, argon2 hashes only.
CREATE TABLE users (
    id                   bigserial PRIMARY KEY,
    username             text NOT NULL UNIQUE,
    display_name         text NOT NULL,
    role                 text NOT NULL,
    node_code            text NOT NULL REFERENCES grid_nodes(code),
    department_code      text REFERENCES departments(code),
    password_hash        text NOT NULL,
    must_change_password boolean NOT NULL DEFAULT false,
    active               boolean NOT NULL DEFAULT true,
    origin               text NOT NULL DEFAULT 'cli' CHECK (origin IN ('site','cli','api')),
    failed_logins        integer NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    password_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Login sessions and machine tokens store only a SHA-256 of the secret.
CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    client_ip    text,
    user_agent   text
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    token_hash   bytea NOT NULL UNIQUE,
    role         text NOT NULL,
    node_code    text NOT NULL REFERENCES grid_nodes(code),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Append-only, hash-chained audit log (对调度人员做出的任何操作有记录性保存).
-- id and the chain are assigned inside the trigger under one lock, so id order is
-- chain order even with concurrent writers.
CREATE SEQUENCE audit_log_id_seq;
CREATE TABLE audit_log (
    id          bigint PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    actor_kind  text NOT NULL CHECK (actor_kind IN ('user','token','system','device','anonymous')),
    role        text,
    node_code   text,
    action      text NOT NULL,
    target      text,
    source_ip   text,
    outcome     text NOT NULL CHECK (outcome IN ('ok','denied','failed','error')),
    detail      jsonb NOT NULL DEFAULT '{}',
    prev_hash   text NOT NULL,
    hash        text NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_actor ON audit_log (actor, at DESC);

CREATE FUNCTION audit_digest(a audit_log) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        a.prev_hash, a.id, (extract(epoch FROM a.at) * 1000000)::bigint, a.actor, a.actor_kind,
        a.role, a.node_code, a.action, a.target, a.source_ip, a.outcome, a.detail
    )::text, 'UTF8')), 'hex')
$$;

CREATE FUNCTION audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock(7316002);
    NEW.id := nextval('audit_log_id_seq');
    SELECT hash INTO last_hash FROM audit_log ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(last_hash, repeat('0', 64));
    NEW.hash := audit_digest(NEW);
    RETURN NEW;
END $$;

CREATE FUNCTION audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END $$;

CREATE TRIGGER audit_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_chain();
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- Events: one model for every source. `time` is the hub's receive clock (device clocks
-- lie, and partitioning/retention must not follow a device stuck in 1970);
-- `source_time` is what the source said.
CREATE TABLE events (
    time         timestamptz NOT NULL,
    id           text NOT NULL,               -- ULID
    source_time  timestamptz,
    source_kind  text NOT NULL,
    source_id    text NOT NULL,
    type         text NOT NULL,               -- dotted: camera.tamper.covered, door.forced_open, radio.sos
    grid_code    text,
    grid_path    text[],
    severity     text,
    lat          double precision,
    lon          double precision,
    msg_id       text,
    payload      jsonb NOT NULL DEFAULT '{}',
    evidence     jsonb NOT NULL DEFAULT '[]'
);
SELECT create_hypertable('events', by_range('time', INTERVAL '7 days'));
CREATE UNIQUE INDEX events_id ON events (id, time);
CREATE INDEX events_source ON events (source_id, time DESC);
CREATE INDEX events_grid ON events (grid_code, time DESC);
CREATE INDEX events_type ON events (type, time DESC);

CREATE TABLE device_telemetry (
    time         timestamptz NOT NULL,
    device_id    text NOT NULL,
    kind         text NOT NULL,
    source_time  timestamptz,
    seq          bigint,
    msg_id       text,
    grid_code    text,
    data         jsonb NOT NULL
);
SELECT create_hypertable('device_telemetry', by_range('time', INTERVAL '1 day'));
CREATE INDEX device_telemetry_device ON device_telemetry (device_id, time DESC);
CREATE INDEX device_telemetry_grid ON device_telemetry (grid_code, time DESC);

-- Tracks of drones and radios, kept apart from generic telemetry so map replay is a
-- narrow, index-only scan.
CREATE TABLE device_positions (
    time         timestamptz NOT NULL,
    device_id    text NOT NULL,
    source_time  timestamptz,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    alt_m        real,
    heading_deg  real,
    speed_mps    real,
    grid_code    text
);
SELECT create_hypertable('device_positions', by_range('time', INTERVAL '1 day'));
CREATE INDEX device_positions_device ON device_positions (device_id, time DESC);
CREATE INDEX device_positions_grid ON device_positions (grid_code, time DESC);

CREATE TABLE camera_health (
    time              timestamptz NOT NULL,
    camera_id         text NOT NULL,
    state             text NOT NULL,
    fps               real,
    bitrate_kbps      real,
    keyframe_interval real,
    reconnects        integer,
    ttff_ms           real,
    last_frame_age_ms real,
    grid_code         text
);
SELECT create_hypertable('camera_health', by_range('time', INTERVAL '1 day'));
CREATE INDEX camera_health_camera ON camera_health (camera_id, time DESC);
CREATE INDEX camera_health_grid ON camera_health (grid_code, time DESC);

-- Nothing is lost: malformed input is kept with its raw bytes and the reason.
CREATE TABLE dead_letters (
    time      timestamptz NOT NULL,
    topic     text NOT NULL,
    payload   bytea NOT NULL,
    reason    text NOT NULL,
    qos       smallint,
    retained  boolean
);
SELECT create_hypertable('dead_letters', by_range('time', INTERVAL '7 days'));
CREATE INDEX dead_letters_topic ON dead_letters (topic, time DESC);

CREATE TABLE evidence (
    id           text PRIMARY KEY,             -- ULID
    sha256       text NOT NULL,
    path         text NOT NULL,                -- relative to the evidence directory
    media_type   text NOT NULL,
    bytes        bigint NOT NULL,
    source_kind  text NOT NULL,
    source_id    text NOT NULL,
    event_id     text,
    captured_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX evidence_source ON evidence (source_id, captured_at DESC);
CREATE INDEX evidence_event ON evidence (event_id);

-- Heartbeats of the hub's own worker processes, read by /readyz.
CREATE TABLE worker_heartbeats (
    name        text PRIMARY KEY,
    kind        text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'
);
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS audit_chain(), audit_append_only(), audit_digest(audit_log) CASCADE;
-- TimescaleDB drops a hypertable only on its own, not in a list.
DROP TABLE IF EXISTS events;
DROP TABLE IF EXISTS device_telemetry;
DROP TABLE IF EXISTS device_positions;
DROP TABLE IF EXISTS camera_health;
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS worker_heartbeats, evidence, audit_log, api_tokens, sessions, users, departments,
    grid_membership, devices, cameras, grid_nodes CASCADE;
DROP SEQUENCE IF EXISTS audit_log_id_seq;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
