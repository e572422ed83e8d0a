"""The footage still on disk, by time: the disk quota's two questions (how much is kept, and
which kept segments are the oldest) read only segments whose file is there (``path IS NOT
NULL``); without this partial index both scan every row of every chunk, pruned ones included
(bench/recording: 0.5 s and 1.1 s at p95 over 2 million rows).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE INDEX recording_segments_kept ON recording_segments (start_at, camera_id) INCLUDE (bytes) WHERE path IS NOT NULL;
"""

DOWNGRADE = r"""
DROP INDEX recording_segments_kept;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
