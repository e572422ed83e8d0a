"""Field devices (issue 4): availability, commands that report back, broadcasts with
per-speaker receipts, geofence state, and what the registry needs to tell site devices
from devices added through the API.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from store.migrate import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Devices come from the site file or from the API; the site sync only manages its own.
-- A decommissioned device keeps its row (history points at it); the devices service
-- clears its retained avail/state topics and stamps retained_cleared_at.
ALTER TABLE devices
    ADD COLUMN origin              text NOT NULL DEFAULT 'site' CHECK (origin IN ('site','api')),
    ADD COLUMN heartbeat_s         real CHECK (heartbeat_s IS NULL OR heartbeat_s > 0),
    ADD COLUMN decommissioned_at   timestamptz,
    ADD COLUMN decommissioned_by   text,
    ADD COLUMN retained_cleared_at timestamptz;

-- What the hub believes about each device, from the Last Will (avail) and the heartbeat
-- timeout. One row per device: a transition is stored (and its event raised) once.
CREATE TABLE device_availability (
    device_id     text PRIMARY KEY REFERENCES devices(id),
    status        text NOT NULL CHECK (status IN ('online','offline')),
    reason        text NOT NULL,             -- avail | lwt | heartbeat_timeout | message | never_seen
    changed_at    timestamptz NOT NULL,
    last_seen_at  timestamptz,
    last_seq      bigint                     -- highest envelope seq seen: door replay starts after it
);

-- Every command the hub sends (the outbox and the record): who, when, target, each phase
-- the device reported, the outcome.  id is the MQTT 5 correlation data and the body's id.
CREATE TABLE device_commands (
    id              text PRIMARY KEY,
    device_id       text NOT NULL REFERENCES devices(id),
    device_kind     text NOT NULL,
    name            text NOT NULL,
    body            jsonb NOT NULL DEFAULT '{}',
    signed          boolean NOT NULL DEFAULT false,
    requested_by    text NOT NULL,
    requester_kind  text NOT NULL,
    requester_role  text,
    requester_node  text,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL,    -- not delivered after this (MQTT 5 message expiry)
    deadline_at     timestamptz NOT NULL,    -- no final phase by then: expired
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending','sent','accepted','progress','finished','failed','rejected',
                                     'preempted','expired')),
    phases          jsonb NOT NULL DEFAULT '[]',
    detail          text,
    sent_at         timestamptz,
    finished_at     timestamptz,
    grid_code       text,
    grid_path       text[] NOT NULL,
    broadcast_id    text
);
CREATE INDEX device_commands_open ON device_commands (deadline_at)
    WHERE state IN ('pending','sent','accepted','progress');
CREATE INDEX device_commands_device ON device_commands (device_id, requested_at DESC);
CREATE INDEX device_commands_broadcast ON device_commands (broadcast_id) WHERE broadcast_id IS NOT NULL;
CREATE INDEX device_commands_grid ON device_commands USING gin (grid_path);

-- Audio played by speakers: synthesised (TTS) or uploaded; served to speakers by URL.
CREATE TABLE broadcast_audio (
    id          text PRIMARY KEY,            -- ULID
    sha256      text NOT NULL,
    path        text NOT NULL,               -- relative to the broadcast media directory
    media_type  text NOT NULL,
    bytes       bigint NOT NULL,
    duration_s  real,
    origin      text NOT NULL CHECK (origin IN ('tts','upload')),
    text        text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Broadcasts (村村响) sent by people through the devices layer: priority tiers, schedules,
-- one receipt per speaker.  (alerts keeps its own `broadcasts` for rule-driven ones.)
CREATE TABLE device_broadcasts (
    id              text PRIMARY KEY,        -- ULID, sent to the speakers as broadcast_id
    kind            text NOT NULL CHECK (kind IN ('notice','emergency')),
    priority        integer NOT NULL CHECK (priority BETWEEN 1 AND 9),
    text            text,
    audio_id        text REFERENCES broadcast_audio(id),
    audio_url       text,                    -- an external URL the speakers fetch themselves
    duration_s      real,
    repeat          integer NOT NULL DEFAULT 1 CHECK (repeat BETWEEN 1 AND 10),
    volume          integer CHECK (volume BETWEEN 0 AND 100),
    targets         text[] NOT NULL,
    scope_path      text[] NOT NULL,         -- the targets' common ancestor: who may see it
    requested_by    text NOT NULL,
    requester_kind  text NOT NULL,
    requester_role  text,
    requester_node  text,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    scheduled_at    timestamptz,             -- play at this time (NULL: now)
    expires_in_s    integer NOT NULL DEFAULT 300,
    state           text NOT NULL DEFAULT 'scheduled'
                    CHECK (state IN ('scheduled','sending','playing','done','partial','failed','cancelled',
                                     'no_speakers')),
    dispatched_at   timestamptz,
    completed_at    timestamptz,
    cancelled_by    text,
    report          jsonb
);
CREATE INDEX device_broadcasts_due ON device_broadcasts (scheduled_at) WHERE state = 'scheduled';
CREATE INDEX device_broadcasts_scope ON device_broadcasts USING gin (scope_path);
CREATE INDEX device_broadcasts_requested ON device_broadcasts (requested_at DESC);

CREATE TABLE device_broadcast_receipts (
    broadcast_id    text NOT NULL REFERENCES device_broadcasts(id),
    speaker_id      text NOT NULL,
    grid_code       text,
    grid_path       text[] NOT NULL,
    village_code    text,                    -- the village/community the speaker serves
    command_id      text NOT NULL UNIQUE,
    online_at_send  boolean NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending','sent','accepted','started','finished','failed','preempted',
                                      'rejected','expired','offline','cancelled')),
    detail          text,
    sent_at         timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (broadcast_id, speaker_id)
);

-- Which grid a radio (or drone) is in now, for geofence enter/exit across restarts.
CREATE TABLE device_geofence (
    device_id   text PRIMARY KEY REFERENCES devices(id),
    grid_code   text,                        -- NULL: outside every grid boundary
    since       timestamptz NOT NULL
);

-- Wake the devices service when there is something to send (it also polls).
CREATE FUNCTION device_work_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_devices', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER device_commands_notify AFTER INSERT ON device_commands
    FOR EACH STATEMENT EXECUTE FUNCTION device_work_notify();
CREATE TRIGGER device_broadcasts_notify AFTER INSERT ON device_broadcasts
    FOR EACH STATEMENT EXECUTE FUNCTION device_work_notify();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS device_geofence, device_broadcast_receipts, device_broadcasts, broadcast_audio,
    device_commands, device_availability CASCADE;
DROP FUNCTION IF EXISTS device_work_notify();
ALTER TABLE devices DROP COLUMN IF EXISTS origin, DROP COLUMN IF EXISTS heartbeat_s,
    DROP COLUMN IF EXISTS decommissioned_at, DROP COLUMN IF EXISTS decommissioned_by,
    DROP COLUMN IF EXISTS retained_cleared_at;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
