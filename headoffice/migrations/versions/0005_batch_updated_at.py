"""batches record when what staff see of them last changed

A closed batch is evaluated again when a late transaction arrives (out of balance -> balanced, or the other way);
``GET /api/v1/batches?since=`` then lists it again, so a puller that asks for what changed since its last pull
does not miss it. Batches closed before this revision have none: their close time stands in.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('updated_at')
