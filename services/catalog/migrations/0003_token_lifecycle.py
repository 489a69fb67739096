"""catalog: tokens get an id, an optional expiry, last use and revocation (additive; old tokens never expire)

Revision ID: catalog_0003
Revises: catalog_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "catalog_0003"
down_revision = "catalog_0002"
branch_labels = None
depends_on = None

SCHEMA = "catalog"


def upgrade() -> None:
    # gen_random_uuid() is built in since PostgreSQL 13: every existing token gets its own id here.
    op.add_column(
        "tokens", sa.Column("id", sa.Uuid, nullable=False, server_default=sa.text("gen_random_uuid()")), schema=SCHEMA
    )
    op.create_index("tokens_id_key", "tokens", ["id"], unique=True, schema=SCHEMA)
    for name in ("expires_at", "last_used_at", "revoked_at"):
        op.add_column("tokens", sa.Column(name, sa.DateTime(timezone=True), nullable=True), schema=SCHEMA)


def downgrade() -> None:
    for name in ("revoked_at", "last_used_at", "expires_at"):
        op.drop_column("tokens", name, schema=SCHEMA)
    op.drop_index("tokens_id_key", table_name="tokens", schema=SCHEMA)
    op.drop_column("tokens", "id", schema=SCHEMA)
