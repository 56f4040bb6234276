"""authorizations can be reversed by the terminal that asked for them

A terminal whose authorization request timed out (or whose sale did not complete after head office approved) sends
a reversal; head office marks the authorization reversed, or keeps a tombstone when the reversal arrives first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('authorizations') as batch:
        batch.add_column(sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('reversal_reason', sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('authorizations') as batch:
        batch.drop_column('reversal_reason')
        batch.drop_column('reversed_at')
