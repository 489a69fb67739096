"""provisioner: the audit row's provision request id, and indexes for reading the trail

Revision ID: provisioner_0003
Revises: provisioner_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "provisioner_0003"
down_revision = "provisioner_0002"
branch_labels = None
depends_on = None

SCHEMA = "provisioner"


def upgrade() -> None:
    op.add_column("audit", sa.Column("request_id", sa.Uuid, nullable=True), schema=SCHEMA)
    op.create_index("audit_request_id", "audit", ["request_id"], schema=SCHEMA)
    op.create_index("audit_host_model", "audit", ["host", "model"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("audit_host_model", "audit", schema=SCHEMA)
    op.drop_index("audit_request_id", "audit", schema=SCHEMA)
    op.drop_column("audit", "request_id", schema=SCHEMA)
