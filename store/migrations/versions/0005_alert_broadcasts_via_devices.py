"""One broadcast path: alerts (rule actions, CAP warnings) create their broadcasts through
the devices layer (``device_broadcasts``: priority tiers, per-speaker receipts, the
village report), so alerts' own ``broadcasts`` / ``broadcast_deliveries`` go.  What a case
needs is which broadcasts it asked for and whether their report is on the case yet:
``case_broadcasts``.  Broadcasts made before this revision move across with their
deliveries as receipts (a delivery without a final answer is closed as ``expired``:
nothing follows it any more), so case pages and ``cap_alerts.broadcast_id`` keep pointing
at something.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from store.migrate import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The broadcasts a case (or an alarm of a rule without a case) asked for, and when the
-- devices layer's report was attached to the case.
CREATE TABLE case_broadcasts (
    broadcast_id  text PRIMARY KEY REFERENCES device_broadcasts(id),
    case_id       text REFERENCES cases(id),
    alarm_id      text REFERENCES alarms(id),
    reported_at   timestamptz
);
CREATE INDEX case_broadcasts_case ON case_broadcasts (case_id);
CREATE INDEX case_broadcasts_unreported ON case_broadcasts (broadcast_id) WHERE reported_at IS NULL;

-- History: alerts' broadcasts become device broadcasts, their deliveries receipts.
INSERT INTO device_broadcasts (id, kind, priority, text, repeat, targets, scope_path, requested_by, requester_kind,
                               requested_at, state, dispatched_at, completed_at, report)
SELECT b.id, b.kind, CASE WHEN b.kind = 'emergency' THEN 9 ELSE 5 END, b.message, least(greatest(b.repeat, 1), 10),
       b.area_codes, b.area_path, b.requested_by, 'system', b.requested_at,
       'playing',                                      -- settled below, from the receipts
       CASE WHEN b.status = 'pending' THEN NULL ELSE b.requested_at END, NULL, NULL
FROM broadcasts b;

INSERT INTO device_broadcast_receipts (broadcast_id, speaker_id, grid_code, grid_path, village_code, command_id,
                                       online_at_send, status, detail, sent_at, finished_at, updated_at)
SELECT d.broadcast_id, d.speaker_id, d.grid_code, coalesce(g.path, ARRAY[]::text[]),
       (SELECT v.code FROM grid_nodes v WHERE v.code = ANY(g.path) AND v.level IN ('village','community')
        ORDER BY cardinality(v.path) DESC LIMIT 1),
       d.command_id, true,
       CASE d.status WHEN 'finished' THEN 'finished' WHEN 'failed' THEN 'failed' WHEN 'rejected' THEN 'rejected'
                     ELSE 'expired' END,
       CASE WHEN d.status IN ('finished','failed','rejected') THEN d.detail
            ELSE coalesce(d.detail, 'no answer recorded (' || d.status || ') before revision 0005') END,
       d.sent_at, d.updated_at, d.updated_at
FROM broadcast_deliveries d LEFT JOIN grid_nodes g ON g.code = d.grid_code;

UPDATE device_broadcasts b SET
    state = CASE WHEN o.status = 'no_speakers' THEN 'no_speakers'
                 WHEN r.total > 0 AND r.finished = r.total THEN 'done'
                 WHEN r.finished > 0 THEN 'partial' ELSE 'failed' END,
    completed_at = coalesce(o.reported_at, r.last, o.requested_at)
FROM broadcasts o
LEFT JOIN LATERAL (SELECT count(*) AS total, count(*) FILTER (WHERE status = 'finished') AS finished,
                          max(updated_at) AS last
                   FROM broadcast_deliveries WHERE broadcast_id = o.id) r ON true
WHERE b.id = o.id;

-- A report already on the case stays as it was; the others are attached by the alerts
-- engine (the devices layer's report, built from the receipts above).
INSERT INTO case_broadcasts (broadcast_id, case_id, alarm_id, reported_at)
SELECT id, case_id, alarm_id, CASE WHEN case_id IS NULL THEN coalesce(reported_at, requested_at) ELSE reported_at END
FROM broadcasts;

ALTER TABLE cap_alerts DROP CONSTRAINT IF EXISTS cap_alerts_broadcast_id_fkey,
    ADD CONSTRAINT cap_alerts_broadcast_id_fkey FOREIGN KEY (broadcast_id) REFERENCES device_broadcasts(id);

DROP TABLE broadcast_deliveries, broadcasts;
DROP FUNCTION IF EXISTS broadcast_notify();
"""

DOWNGRADE = r"""
CREATE TABLE broadcasts (
    id            text PRIMARY KEY,
    case_id       text REFERENCES cases(id),
    alarm_id      text REFERENCES alarms(id),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    area_codes    text[] NOT NULL,
    area_path     text[] NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('notice','emergency')),
    message       text NOT NULL,
    repeat        integer NOT NULL DEFAULT 1,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending','sent','done','partial','failed','no_speakers')),
    reported_at   timestamptz,
    report        jsonb
);
CREATE INDEX broadcasts_case ON broadcasts (case_id);

CREATE TABLE broadcast_deliveries (
    broadcast_id  text NOT NULL REFERENCES broadcasts(id),
    speaker_id    text NOT NULL,
    grid_code     text,
    command_id    text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending','sent','accepted','started','finished','failed','rejected','no_answer')),
    sent_at       timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    detail        text,
    PRIMARY KEY (broadcast_id, speaker_id)
);
CREATE INDEX broadcast_deliveries_pending ON broadcast_deliveries (status) WHERE status IN ('pending','sent','accepted','started');
CREATE UNIQUE INDEX broadcast_deliveries_command ON broadcast_deliveries (command_id);

-- The alerts broadcasts move back (their receipts as deliveries).
INSERT INTO broadcasts (id, case_id, alarm_id, requested_by, requested_at, area_codes, area_path, kind, message, repeat,
                        status, reported_at, report)
SELECT b.id, l.case_id, l.alarm_id, b.requested_by, b.requested_at, b.targets, b.scope_path, b.kind,
       coalesce(b.text, ''), b.repeat,
       CASE WHEN b.state IN ('done','partial','failed','no_speakers') THEN b.state
            WHEN b.state = 'cancelled' THEN 'failed' ELSE 'sent' END,
       l.reported_at, b.report
FROM device_broadcasts b JOIN case_broadcasts l ON l.broadcast_id = b.id;

-- Open receipts are closed (no_answer): the engine of 0004 must not send them a second time.
INSERT INTO broadcast_deliveries (broadcast_id, speaker_id, grid_code, command_id, status, sent_at, updated_at, detail)
SELECT r.broadcast_id, r.speaker_id, r.grid_code, r.command_id,
       CASE WHEN r.status IN ('finished','failed','rejected') THEN r.status
            WHEN r.status = 'preempted' THEN 'failed' ELSE 'no_answer' END,
       r.sent_at, r.updated_at, r.detail
FROM device_broadcast_receipts r JOIN case_broadcasts l ON l.broadcast_id = r.broadcast_id;

CREATE FUNCTION broadcast_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_broadcasts', '');
    RETURN NULL;
END $$;
CREATE TRIGGER broadcast_notify AFTER INSERT ON broadcast_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION broadcast_notify();

ALTER TABLE cap_alerts DROP CONSTRAINT IF EXISTS cap_alerts_broadcast_id_fkey;
UPDATE cap_alerts SET broadcast_id = NULL WHERE broadcast_id NOT IN (SELECT id FROM broadcasts);
ALTER TABLE cap_alerts ADD CONSTRAINT cap_alerts_broadcast_id_fkey FOREIGN KEY (broadcast_id) REFERENCES broadcasts(id);

CREATE TEMP TABLE moved_back ON COMMIT DROP AS SELECT broadcast_id FROM case_broadcasts;
DROP TABLE case_broadcasts;
DELETE FROM device_broadcast_receipts WHERE broadcast_id IN (SELECT broadcast_id FROM moved_back);
DELETE FROM device_broadcasts WHERE id IN (SELECT broadcast_id FROM moved_back);
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
