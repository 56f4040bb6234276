"""batches keep the sequence range the terminal closed them with

So a batch closed out of balance can be evaluated again when a late transaction arrives (and one closed balanced
notices a transaction it did not count).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('first_sequence', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('last_sequence', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('last_sequence')
        batch.drop_column('first_sequence')
