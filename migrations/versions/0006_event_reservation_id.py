"""usage_events.reservation_id: the token hold an event carried; an index for pruning holds.

- usage_events.reservation_id: the batch statement settles holds from the rows it inserts
  (their RETURNING), so the event keeps which hold it carried. Rows stored before this
  revision have NULL, which the consumer reads as "not recorded" (a redelivery of such an
  event carrying an id is no conflict). Nullable and without default, the column is added
  without rewriting the table; the statement gives up after 10 s rather than queue behind a
  long reader of usage_events and block the consumers' inserts behind it (run it again).
- ix_usage_token_holds_ended: the rollup run deletes the rows of holds that ended over
  ROLLUP_HOLD_RETENTION_DAYS ago; the index finds them without scanning the live holds.
  Built CONCURRENTLY, so reservations go on meanwhile.

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
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.add_column("usage_events", sa.Column("reservation_id", sa.Uuid(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_usage_token_holds_ended",
            "usage_token_holds",
            ["ended_at"],
            postgresql_where=sa.text("state <> 'live'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_usage_token_holds_ended", table_name="usage_token_holds")
    op.drop_column("usage_events", "reservation_id")
