"""provisioner: outbox and provision requests

Revision ID: provisioner_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from services.runtime.outbox import outbox_columns

revision = "provisioner_0001"
down_revision = None
branch_labels = ("provisioner",)
depends_on = None

SCHEMA = "provisioner"


def upgrade() -> None:
    op.create_table("outbox", *outbox_columns(), schema=SCHEMA)
    op.create_index("outbox_pending", "outbox", ["id"], schema=SCHEMA, postgresql_where=sa.text("published_at IS NULL"))
    op.create_table(
        "requests",
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("request_id", sa.Uuid, nullable=False, index=True),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("hosts", sa.JSON, nullable=False),
        sa.Column("force", sa.Boolean, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("requests", schema=SCHEMA)
    op.drop_table("outbox", schema=SCHEMA)
