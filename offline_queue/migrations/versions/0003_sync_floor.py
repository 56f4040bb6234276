"""The drain pages on the primary key from a stored low-water mark (``meta.sync_floor``: every transaction below
it is accepted or rejected) instead of through a partial index on unsynced rows: one index fewer to write in every
sale's fsynced commit, and none to maintain when a page is marked accepted.

Revision ID: 0003_sync_floor
Revises: 0002_payments_printjobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_sync_floor"
down_revision = "0002_payments_printjobs"
branch_labels = None
depends_on = None

UNSYNCED = "sync_state IN ('queued', 'uploaded')"


def upgrade() -> None:
    conn = op.get_bind()
    # Computed while the partial index still exists, inside the migration's one transaction.
    floor = conn.execute(sa.text(f"SELECT MIN(sequence) FROM transactions WHERE {UNSYNCED}")).scalar()
    if floor is None:
        floor = conn.execute(sa.text("SELECT COALESCE(MAX(sequence), 0) + 1 FROM transactions")).scalar()
    conn.execute(
        sa.text("INSERT OR REPLACE INTO meta (key, value) VALUES ('sync_floor', :floor)"), {"floor": str(floor)}
    )
    op.drop_index("ix_transactions_unsynced", table_name="transactions")


def downgrade() -> None:
    op.create_index("ix_transactions_unsynced", "transactions", ["sequence"], sqlite_where=sa.text(UNSYNCED))
    op.execute("DELETE FROM meta WHERE key = 'sync_floor'")
