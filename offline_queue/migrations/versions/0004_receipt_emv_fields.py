"""ATC and TVR of the card's answer, kept with the transaction so receipts (and reprints) can print them.
Neither is sensitive card data; both are local only (not chained, not uploaded: head office gets them in the
sealed clearing data).

Revision ID: 0004_receipt_emv_fields
Revises: 0003_sync_floor
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_receipt_emv_fields"
down_revision = "0003_sync_floor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transactions", sa.Column("atc", sa.Integer(), nullable=True))
    op.add_column("transactions", sa.Column("tvr", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transactions") as batch:
        batch.drop_column("tvr")
        batch.drop_column("atc")
