"""The outbox wakes its sender only when a message became due for it.

0003's statement-level trigger notified ``xlhub_outbox`` after every INSERT or UPDATE OF
status of the outbox, also one that changed no row: the sender's claim (an UPDATE … WHERE
id IN (… SKIP LOCKED)) changes nothing on an idle hub, notified, woke the sender, which
claimed again — about 1,400 statements a second, half a core of the alerts worker and
almost as much of PostgreSQL, to deliver nothing. Now the triggers see the rows a
statement changed (transition tables) and notify only when one of them is pending: a new
message, a replayed one, a failed attempt rescheduled. The sender's own claims and results
stay silent; it goes on by itself after a delivery (the next message of a case may be due)
and sleeps until the next due time otherwise.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed WHERE status = 'pending') THEN
        PERFORM pg_notify('xlhub_outbox', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify_insert AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
CREATE TRIGGER outbox_notify_update AFTER UPDATE ON outbox
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS outbox_notify_insert ON outbox;
DROP TRIGGER IF EXISTS outbox_notify_update ON outbox;
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xlhub_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT OR UPDATE OF status ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
