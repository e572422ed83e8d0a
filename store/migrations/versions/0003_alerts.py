"""Alerts and the shared case lifecycle: the event hand-off queue, alarms, cases with their
electronic archive (电子档案), assignments, evidence and SLA clocks, the transactional
outbox to case systems, broadcasts, notifications, CAP imports and the change feed.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-23
"""
from store.migrate import run_script

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Hand-off from ingest to alerts that loses nothing: a trigger queues every new event in
-- the inserting transaction, the engine deletes what it processed in the transaction
-- that writes the alarms and cases.  Nothing is missed while the engine is down, nothing
-- is processed twice, and ingest needs no knowledge of alerts.
CREATE TABLE alert_event_queue (
    event_id    text PRIMARY KEY,
    event_time  timestamptz NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX alert_event_queue_order ON alert_event_queue (enqueued_at, event_id);

CREATE FUNCTION alert_enqueue_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alert_event_queue (event_id, event_time) VALUES (NEW.id, NEW.time) ON CONFLICT DO NOTHING;
    -- identical notifications in one transaction are folded into one by PostgreSQL
    PERFORM pg_notify('xlhub_alert_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER alert_enqueue AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION alert_enqueue_event();

-- An event the engine could not process (a bug, not a rule): kept with the reason.
CREATE TABLE alert_event_failures (
    event_id    text PRIMARY KEY,
    event_time  timestamptz NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    error       text NOT NULL
);

-- Alarms (告警): one open alarm per (source, type) counts repeats instead of duplicating.
CREATE TABLE alarms (
    id              text PRIMARY KEY,              -- ULID
    rule_id         text NOT NULL,
    source_kind     text NOT NULL,
    source_id       text NOT NULL,
    type            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('critical','major','minor','warning')),
    state           text NOT NULL CHECK (state IN ('active','acknowledged','cleared')),
    title           text NOT NULL,
    grid_code       text,
    grid_path       text[] NOT NULL,
    lat             double precision,
    lon             double precision,
    first_event_id  text NOT NULL,
    last_event_id   text NOT NULL,
    first_at        timestamptz NOT NULL,
    last_at         timestamptz NOT NULL,
    count           integer NOT NULL DEFAULT 1,
    flaps           integer NOT NULL DEFAULT 0,
    flapping        boolean NOT NULL DEFAULT false,
    acked_by        text,
    acked_at        timestamptz,
    ack_note        text,
    cleared_by      text,
    cleared_at      timestamptz,
    clear_reason    text,
    case_id         text,
    case_due_at     timestamptz,                   -- when: unacknowledged — open a case then
    clear_due_at    timestamptz,                   -- clear_after — clear when quiet until then
    correlated      text[] NOT NULL DEFAULT '{}',  -- cameras whose events belong to this incident
    evidence        jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alarms_one_open ON alarms (source_id, type) WHERE state <> 'cleared';
CREATE INDEX alarms_recent_cleared ON alarms (source_id, type, cleared_at DESC) WHERE state = 'cleared';
CREATE INDEX alarms_path ON alarms USING gin (grid_path);
CREATE INDEX alarms_last ON alarms (last_at DESC);
CREATE INDEX alarms_case_due ON alarms (case_due_at) WHERE case_due_at IS NOT NULL AND case_id IS NULL;
CREATE INDEX alarms_clear_due ON alarms (clear_due_at) WHERE clear_due_at IS NOT NULL AND state <> 'cleared';

CREATE TABLE alarm_events (
    alarm_id    text NOT NULL REFERENCES alarms(id),
    event_id    text NOT NULL,
    event_time  timestamptz NOT NULL,
    role        text NOT NULL CHECK (role IN ('trigger','repeat','correlated','clear')),
    PRIMARY KEY (alarm_id, event_id)
);
CREATE INDEX alarm_events_event ON alarm_events (event_id);

-- Correlation windows: events of these sources within [opens_at, closes_at] belong to the alarm.
CREATE TABLE alarm_correlations (
    alarm_id    text NOT NULL REFERENCES alarms(id),
    source_id   text NOT NULL,
    opens_at    timestamptz NOT NULL,
    closes_at   timestamptz NOT NULL,
    types       text[] NOT NULL,
    PRIMARY KEY (alarm_id, source_id)
);
CREATE INDEX alarm_correlations_source ON alarm_correlations (source_id, closes_at);

-- Cases (工单/案卷) of the shared lifecycle.
CREATE SEQUENCE case_number_seq;
CREATE TABLE cases (
    id               text PRIMARY KEY,              -- ULID
    number           text NOT NULL UNIQUE,          -- shown to people and case systems
    title            text NOT NULL,
    description      text NOT NULL DEFAULT '',
    category         text NOT NULL,
    urgency          text NOT NULL CHECK (urgency IN ('low','medium','high')),
    channel          text NOT NULL,                 -- video, device, hotline, grid, cap, open311, external
    state            text NOT NULL,
    resume_state     text,                          -- where a suspended case resumes
    grid_code        text NOT NULL,                 -- where it happened: the scope (一级一权限)
    grid_path        text[] NOT NULL,
    owner_code       text NOT NULL,                 -- the level responsible now (上报/交办 move it)
    owner_path       text[] NOT NULL,
    lat              double precision,
    lon              double precision,
    address          text,
    alarm_id         text REFERENCES alarms(id),
    source_ref       text,                          -- CAP identifier, Open311 token, external id …
    external_ref     text,                          -- the case system's own number
    reporter         jsonb,                         -- confidential: name, phone
    created_at       timestamptz NOT NULL,
    created_by       text NOT NULL,
    -- SLA: the limits are copied at creation, so a changed site file never rewrites history
    sla              jsonb NOT NULL,
    due_at           timestamptz NOT NULL,
    stage            text,
    stage_started_at timestamptz,
    stage_due_at     timestamptz,
    stage_warned     boolean NOT NULL DEFAULT false,
    stage_overdue    boolean NOT NULL DEFAULT false,
    warned           boolean NOT NULL DEFAULT false,
    overdue          boolean NOT NULL DEFAULT false,
    overdue_at       timestamptz,
    sla_check_at     timestamptz,                   -- next moment the SLA scanner must look
    paused_at        timestamptz,
    paused_s         double precision NOT NULL DEFAULT 0,
    supervisions     integer NOT NULL DEFAULT 0,
    escalations      integer NOT NULL DEFAULT 0,
    reopen_count     integer NOT NULL DEFAULT 0,
    round            integer NOT NULL DEFAULT 0,    -- dispatch round (不满意再分流 starts another)
    satisfaction     smallint CHECK (satisfaction BETWEEN 1 AND 5),
    closed_at        timestamptz,
    outbox_seq       integer NOT NULL DEFAULT 0,
    version          integer NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cases_grid_path ON cases USING gin (grid_path);
CREATE INDEX cases_created ON cases (created_at DESC);
CREATE INDEX cases_state ON cases (state, updated_at DESC);
CREATE INDEX cases_sla_check ON cases (sla_check_at) WHERE sla_check_at IS NOT NULL;
CREATE INDEX cases_alarm ON cases (alarm_id);
CREATE UNIQUE INDEX cases_source_ref ON cases (channel, source_ref) WHERE source_ref IS NOT NULL;

-- The electronic archive (全过程电子档案): every step with who, when, from where and what.
CREATE TABLE case_transitions (
    id               bigserial PRIMARY KEY,
    case_id          text NOT NULL REFERENCES cases(id),
    at               timestamptz NOT NULL,
    action           text NOT NULL,
    from_state       text,
    to_state         text NOT NULL,
    actor            text NOT NULL,
    actor_kind       text NOT NULL CHECK (actor_kind IN ('user','token','system','external')),
    actor_role       text,
    actor_node       text,
    actor_department text,
    source_ip        text,
    owner_code       text,                          -- the responsible node after the step
    note             text,
    detail           jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX case_transitions_case ON case_transitions (case_id, id);
CREATE INDEX case_transitions_at ON case_transitions (at);

-- Dispatch to departments (in parallel) or to a grid worker.
CREATE TABLE case_assignments (
    id               bigserial PRIMARY KEY,
    case_id          text NOT NULL REFERENCES cases(id),
    round            integer NOT NULL,
    department_code  text,
    assignee         text,                          -- a username (grid worker)
    node_code        text NOT NULL,
    state            text NOT NULL CHECK (state IN ('assigned','accepted','done','returned','withdrawn')),
    assigned_at      timestamptz NOT NULL,
    accepted_at      timestamptz,
    done_at          timestamptz,
    returned_at      timestamptz,
    handled_by       text,
    note             text,
    CHECK (department_code IS NOT NULL OR assignee IS NOT NULL)
);
CREATE INDEX case_assignments_case ON case_assignments (case_id, round);
CREATE INDEX case_assignments_department ON case_assignments (department_code, state);

CREATE TABLE case_evidence (
    id           bigserial PRIMARY KEY,
    case_id      text NOT NULL REFERENCES cases(id),
    kind         text NOT NULL,                     -- snapshot, clip, media, telemetry, broadcast_report, document
    ref          text NOT NULL,
    evidence_id  text,                              -- row of the evidence table when the file is known
    sha256       text,
    media_type   text,
    source_kind  text,
    source_id    text,
    event_id     text,
    captured_at  timestamptz,
    added_at     timestamptz NOT NULL DEFAULT now(),
    added_by     text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}',
    UNIQUE (case_id, ref)
);

-- Transactional outbox: the case change and its outgoing message commit together.
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    target           text NOT NULL,                 -- case system name
    case_id          text NOT NULL,
    seq              integer NOT NULL,              -- per case: delivered in this order
    event            text NOT NULL,
    idempotency_key  text NOT NULL,                 -- <case id>:<seq>: the receiver's dedupe key
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','delivering','delivered','dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until      timestamptz,
    give_up_at       timestamptz NOT NULL,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    dead_at          timestamptz,
    replays          integer NOT NULL DEFAULT 0,
    UNIQUE (target, idempotency_key)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status IN ('pending','delivering');
CREATE INDEX outbox_case_open ON outbox (target, case_id, id) WHERE status <> 'delivered';
CREATE INDEX outbox_dead ON outbox (dead_at DESC) WHERE status = 'dead';

CREATE TABLE outbox_attempts (
    id           bigserial PRIMARY KEY,
    outbox_id    bigint NOT NULL REFERENCES outbox(id),
    at           timestamptz NOT NULL DEFAULT now(),
    status       integer,
    error        text,
    duration_ms  real
);
CREATE INDEX outbox_attempts_message ON outbox_attempts (outbox_id, id);

CREATE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT OR UPDATE OF status ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Status messages received from case systems: each applied once.
CREATE TABLE inbound_messages (
    system       text NOT NULL,
    message_id   text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    case_id      text,
    status       text,
    result       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (system, message_id)
);

-- Broadcasts (村村响) requested by rules, CAP warnings or people; published by the engine.
CREATE TABLE broadcasts (
    id            text PRIMARY KEY,                -- ULID, sent to the speakers as broadcast_id
    case_id       text REFERENCES cases(id),
    alarm_id      text REFERENCES alarms(id),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    area_codes    text[] NOT NULL,
    area_path     text[] NOT NULL,                 -- scope: the common ancestor's path
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

CREATE FUNCTION broadcast_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_broadcasts', '');
    RETURN NULL;
END $$;
CREATE TRIGGER broadcast_notify AFTER INSERT ON broadcast_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION broadcast_notify();

-- Notifications to people of a role at a node (e.g. the on-duty dispatcher).
CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    role        text NOT NULL,
    node_code   text NOT NULL,
    node_path   text[] NOT NULL,
    case_id     text,
    alarm_id    text,
    title       text NOT NULL,
    body        text NOT NULL DEFAULT '',
    acked_by    text,
    acked_at    timestamptz
);
CREATE INDEX notifications_node ON notifications USING gin (node_path);

-- CAP 1.2 alerts imported (emergency warnings, GB/T 35965).
CREATE TABLE cap_alerts (
    id           text PRIMARY KEY,
    sender       text NOT NULL,
    identifier   text NOT NULL,
    sent         timestamptz,
    msg_type     text NOT NULL,
    status       text NOT NULL,
    sha256       text NOT NULL,
    xml          text NOT NULL,
    case_id      text REFERENCES cases(id),
    broadcast_id text REFERENCES broadcasts(id),
    imported_at  timestamptz NOT NULL DEFAULT now(),
    imported_by  text NOT NULL,
    UNIQUE (sender, identifier)
);

-- The change feed of alarms, cases and notifications (SSE clients resume by id).
CREATE TABLE alert_feed (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text NOT NULL,
    ref         text NOT NULL,
    action      text NOT NULL,
    grid_path   text[] NOT NULL,
    role        text,                               -- only this role sees it (notifications)
    summary     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_feed_at ON alert_feed (at);
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS alert_enqueue ON events;
DROP TABLE IF EXISTS alert_feed, cap_alerts, notifications, broadcast_deliveries, broadcasts, inbound_messages,
    outbox_attempts, outbox, case_evidence, case_assignments, case_transitions, cases, alarm_correlations,
    alarm_events, alarms, alert_event_failures, alert_event_queue CASCADE;
DROP SEQUENCE IF EXISTS case_number_seq;
DROP FUNCTION IF EXISTS alert_enqueue_event(), outbox_notify(), broadcast_notify();
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
