"""Idempotency keys of people's POSTs (the grid worker's phone, 网格员 APP): a report, a
photo or a feedback entered offline is queued on the phone and sent when the network
returns, each with a client-generated ``Idempotency-Key``. The first request that
succeeds records what it made (a case, an evidence file) under (caller, key) in its own
transaction; a retry of the same key — the answer was lost on a patchy village network —
gets that result again instead of a second case.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE idempotency_keys (
    principal    text NOT NULL,                -- who sent it: the key is theirs alone
    key          text NOT NULL,                -- client-generated (a UUID per queued action)
    route        text NOT NULL,                -- "POST /api/cases": a key reused elsewhere is refused
    result_kind  text NOT NULL,                -- case | evidence
    result_ref   text NOT NULL,                -- the case id or evidence id the first request made
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
"""

DOWNGRADE = r"""
DROP TABLE idempotency_keys;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
