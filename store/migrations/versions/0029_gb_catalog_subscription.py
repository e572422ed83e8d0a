"""GB/T 28181 catalog subscription (目录订阅, cameras/gb28181/server.py): whether a device's
catalog changes reach the hub by SUBSCRIBE/NOTIFY (``active``), the device refused the
subscription (``unsupported``: the hub falls back to periodic Catalog queries), or there is
none (``none``: not yet subscribed, unsubscribed, offline). The reason is Chinese, shown to
operators (e.g. ``设备不支持目录订阅（489 Bad Event）``). The same three columns for the alarm
subscription (报警订阅, ``alarm_subscription``).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07
"""
from store.migrate import run_script

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE gb_devices
    ADD COLUMN catalog_subscription text NOT NULL DEFAULT 'none'
        CHECK (catalog_subscription IN ('active', 'unsupported', 'none')),
    ADD COLUMN catalog_subscription_reason text,
    ADD COLUMN catalog_subscription_expires_at timestamptz,
    ADD COLUMN alarm_subscription text NOT NULL DEFAULT 'none'
        CHECK (alarm_subscription IN ('active', 'unsupported', 'none')),
    ADD COLUMN alarm_subscription_reason text,
    ADD COLUMN alarm_subscription_expires_at timestamptz;
"""

DOWNGRADE = r"""
ALTER TABLE gb_devices DROP COLUMN catalog_subscription, DROP COLUMN catalog_subscription_reason,
    DROP COLUMN catalog_subscription_expires_at, DROP COLUMN alarm_subscription, DROP COLUMN alarm_subscription_reason,
    DROP COLUMN alarm_subscription_expires_at;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
