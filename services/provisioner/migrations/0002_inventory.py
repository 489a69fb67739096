"""provisioner: inventory, audit log, service state, request results

Revision ID: provisioner_0002
Revises: provisioner_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "provisioner_0002"
down_revision = "provisioner_0001"
branch_labels = None
depends_on = None

SCHEMA = "provisioner"


def upgrade() -> None:
    op.add_column("requests", sa.Column("result", sa.JSON, nullable=True), schema=SCHEMA)
    op.add_column("requests", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True), schema=SCHEMA)
    op.create_table(
        "inventory",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("repo_id", sa.Text, nullable=True),
        sa.Column("file_name", sa.Text, nullable=True),
        sa.Column("quantization", sa.Text, nullable=True),
        sa.Column("parameter_count", sa.BigInteger, nullable=True),
        sa.Column("context_window", sa.BigInteger, nullable=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("sha256", sa.Text, nullable=True),
        sa.Column("revision", sa.Text, nullable=True),
        sa.Column("ollama_name", sa.Text, nullable=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("host", "model_id", name="inventory_host_model"),
        schema=SCHEMA,
    )
    op.create_index("inventory_host_sha256", "inventory", ["host", "sha256"], schema=SCHEMA)
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("revision", sa.Text, nullable=True),
        sa.Column("sha256", sa.Text, nullable=True),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        schema=SCHEMA,
    )
    op.create_table(
        "state",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("state", schema=SCHEMA)
    op.drop_table("audit", schema=SCHEMA)
    op.drop_table("inventory", schema=SCHEMA)
    op.drop_column("requests", "completed_at", schema=SCHEMA)
    op.drop_column("requests", "result", schema=SCHEMA)
