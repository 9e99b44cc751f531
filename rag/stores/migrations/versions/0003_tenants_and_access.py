"""Tenants and access groups on documents.

Every document belongs to a `tenant` (the uploading key's; 'default' for rows written before)
and may name `access` groups (a JSON list; '[]': the whole tenant may read it).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE documents ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE documents ADD COLUMN access TEXT NOT NULL DEFAULT '[]';
CREATE INDEX documents_tenant ON documents (tenant, collection)
"""

DOWNGRADE = """
DROP INDEX documents_tenant;
ALTER TABLE documents DROP COLUMN access;
ALTER TABLE documents DROP COLUMN tenant
"""


def upgrade() -> None:
    for statement in UPGRADE.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE.split(";"):
        if statement.strip():
            op.execute(statement)
