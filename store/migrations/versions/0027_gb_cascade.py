"""GB/T 28181 cascade (cameras/gb28181/cascade.py): the stable 20-digit IDs the hub gives its
grid nodes and cameras towards upper platforms. An ID, once given, is never reused or changed:
``<hub domain (10)><type (3)><network 0><sequence (6)>``, the sequence per type code taken
from this table (see cameras/gb28181/catalog_ids.py).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE gb_cascade_ids (
    kind       text NOT NULL CHECK (kind IN ('grid', 'camera')),
    key        text NOT NULL,                  -- grid code or camera id
    type_code  text NOT NULL CHECK (type_code ~ '^[0-9]{3}$'),
    seq        integer NOT NULL CHECK (seq BETWEEN 1 AND 999999),
    gb_id      text NOT NULL UNIQUE CHECK (gb_id ~ '^[0-9]{20}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key),
    UNIQUE (type_code, seq)
);
"""

DOWNGRADE = r"""
DROP TABLE gb_cascade_ids;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
