"""Time-ordered token hold ids: ``usage_token_holds.id`` defaults to a UUID v7.

``biz2bricks_uuid_v7()`` (biz2bricks_core.event_ids.UUID_V7_FUNCTION) makes them: holds are
made and settled in time order, so the batch that settles a thousand of them probes adjacent
pages of the primary key instead of a thousand random ones. Existing holds keep their ids
(ids of any version stay valid); only the column default changes, so the migration takes a
moment and no rewrite.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

from alembic import op

from biz2bricks_core.event_ids import NEW_ID_SQL, UUID_V7_FUNCTION

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(UUID_V7_FUNCTION)
    op.execute(f"ALTER TABLE usage_token_holds ALTER COLUMN id SET DEFAULT {NEW_ID_SQL}")


def downgrade() -> None:
    op.execute("ALTER TABLE usage_token_holds ALTER COLUMN id SET DEFAULT gen_random_uuid()")
    op.execute("DROP FUNCTION biz2bricks_uuid_v7()")
