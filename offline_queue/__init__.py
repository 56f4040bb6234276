"""The durable SQLite queue (SQLAlchemy + Alembic) and the sync engine that drains it to head office."""
