"""Alembic environment shared by every service: the connection and schema come in through config attributes."""

from alembic import context

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["schema"]

context.configure(connection=connection, target_metadata=None, version_table_schema=schema, include_schemas=True)
with context.begin_transaction():
    context.run_migrations()
