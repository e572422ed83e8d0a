"""GB/T 28181 access (cameras/gb28181): the devices that register to the hub (admitted or
only seen: an unknown device that tries is listed, never admitted by trying), their catalog
channels, and which camera of the registry each channel is. Cameras get an ``origin``: the
site file's sync deactivates only its own, never a GB/T 28181 channel's.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE cameras ADD COLUMN origin text NOT NULL DEFAULT 'site' CHECK (origin IN ('site', 'gb28181'));

CREATE TABLE gb_devices (
    id              text PRIMARY KEY CHECK (id ~ '^[0-9]{20}$'),
    name            text,
    admitted        boolean NOT NULL DEFAULT false,
    admitted_by     text,
    admitted_at     timestamptz,
    state           text NOT NULL DEFAULT 'unregistered'
                    CHECK (state IN ('unregistered', 'registered', 'offline', 'refused')),
    transport       text CHECK (transport IN ('udp', 'tcp')),
    host            text,
    port            integer,
    expires_at      timestamptz,
    registered_at   timestamptz,
    last_keepalive  timestamptz,
    keepalive_misses integer NOT NULL DEFAULT 0,
    manufacturer    text,
    model           text,
    firmware        text,
    channel_count   integer NOT NULL DEFAULT 0,
    charset         text,
    clock_skew_s    double precision,
    attempts        integer NOT NULL DEFAULT 0,
    last_refusal    text,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gb_devices_admitted ON gb_devices (admitted, state);

CREATE TABLE gb_channels (
    device_id   text NOT NULL REFERENCES gb_devices(id),
    channel_id  text NOT NULL CHECK (channel_id ~ '^[0-9]{20}$'),
    camera_id   text NOT NULL REFERENCES cameras(id),
    name        text NOT NULL,
    ptz_type    integer,
    status      text,
    civil_code  text,
    lon         double precision,
    lat         double precision,
    retired_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, channel_id)
);
CREATE UNIQUE INDEX gb_channels_camera ON gb_channels (camera_id);
"""

DOWNGRADE = r"""
DROP TABLE gb_channels;
DROP TABLE gb_devices;
DELETE FROM grid_membership WHERE source_kind = 'camera' AND source_id IN (SELECT id FROM cameras WHERE origin = 'gb28181');
DELETE FROM cameras WHERE origin = 'gb28181';
ALTER TABLE cameras DROP COLUMN origin;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
