"""catalog: outbox

Revision ID: catalog_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from services.runtime.outbox import outbox_columns

revision = "catalog_0001"
down_revision = None
branch_labels = ("catalog",)
depends_on = None

SCHEMA = "catalog"


def upgrade() -> None:
    op.create_table("outbox", *outbox_columns(), schema=SCHEMA)
    op.create_index("outbox_pending", "outbox", ["id"], schema=SCHEMA, postgresql_where=sa.text("published_at IS NULL"))


def downgrade() -> None:
    op.drop_table("outbox", schema=SCHEMA)
