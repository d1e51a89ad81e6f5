"""usage_events.reservation_id: the token hold an event carried.

The batch statement settles holds from the rows it inserts (their RETURNING), so the event
keeps which hold it settled, and a republished event naming another hold is a conflicting
duplicate. Nullable and without default: PostgreSQL adds it without rewriting the table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("reservation_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_events", "reservation_id")
