"""Document versions and table-row headers.

A document uploaded under the name of a current one in the same collection (with new bytes)
is the next `version` of its `lineage` (the first version's id); `replaces` names the version
it was uploaded to replace, `reused_chunks` how many of its chunks kept that version's vectors.
`lineage` defaults to '' (read as the row's own id), so that processes of the release before
still insert rows during a rolling upgrade.
A sentence cut from a table row carries the table's `header` line.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE sentences ADD COLUMN header TEXT;
ALTER TABLE documents ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE documents ADD COLUMN lineage TEXT;
ALTER TABLE documents ADD COLUMN replaces TEXT;
ALTER TABLE documents ADD COLUMN reused_chunks INTEGER NOT NULL DEFAULT 0;
UPDATE documents SET lineage = id WHERE lineage IS NULL;
ALTER TABLE documents ALTER COLUMN lineage SET DEFAULT '';
ALTER TABLE documents ALTER COLUMN lineage SET NOT NULL;
CREATE INDEX documents_name ON documents (collection, filename);
CREATE INDEX documents_lineage ON documents (lineage, version);
"""

DOWNGRADE = """
DROP INDEX documents_lineage;
DROP INDEX documents_name;
ALTER TABLE documents DROP COLUMN reused_chunks;
ALTER TABLE documents DROP COLUMN replaces;
ALTER TABLE documents DROP COLUMN lineage;
ALTER TABLE documents DROP COLUMN version;
ALTER TABLE sentences DROP COLUMN header;
"""


def upgrade() -> None:
    for statement in UPGRADE.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE.split(";"):
        if statement.strip():
            op.execute(statement)
