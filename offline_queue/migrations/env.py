"""Alembic environment of the offline queue. The store hands over its connection (already inside a
BEGIN IMMEDIATE transaction), so a migration is all-or-nothing and two processes cannot migrate at once."""

from alembic import context
from sqlalchemy import create_engine

from offline_queue.tables import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
