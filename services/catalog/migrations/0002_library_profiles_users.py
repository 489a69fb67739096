"""catalog: models, profiles, profile sets, performance profiles, users, tokens, meta

Revision ID: catalog_0002
Revises: catalog_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "catalog_0002"
down_revision = "catalog_0001"
branch_labels = None
depends_on = None

SCHEMA = "catalog"


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("family", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("parameter_count", sa.BigInteger, nullable=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("doc", sa.JSON, nullable=False),
        _ts("updated_at"),
        schema=SCHEMA,
    )
    op.create_table(
        "profiles",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("owner_id", sa.Text, nullable=True, index=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("type", sa.Integer, nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=False),
        sa.Column("circuit_breaker", sa.JSON, nullable=True),
        sa.Column("gpu_config", sa.JSON, nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("type BETWEEN 1 AND 19", name="profile_type_range"),
        schema=SCHEMA,
    )
    op.create_table(
        "profile_sets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        _ts("updated_at"),
        schema=SCHEMA,
    )
    op.create_table(
        "performance_profiles",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("doc", sa.JSON, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("profiles", sa.JSON, nullable=False),
        sa.Column("overrides", sa.JSON, nullable=False),
        _ts("created_at"),
        schema=SCHEMA,
    )
    op.create_table(
        "tokens",
        sa.Column("token_sha256", sa.Text, primary_key=True),
        sa.Column(
            "user_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.users.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        _ts("created_at"),
        schema=SCHEMA,
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.JSON, nullable=True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("meta", "tokens", "users", "performance_profiles", "profile_sets", "profiles", "models"):
        op.drop_table(table, schema=SCHEMA)
