"""PostgreSQL: notify every node's cache of changed tags, manifests and blob links

Statement-level triggers send ``pg_notify('dockyard_cache', key)`` for what a statement changed,
from inside its transaction, so the notifications are delivered on commit (and never for a
rollback). A key is ``t <repository> <tag>``, ``m <repository> <digest>``, ``b <repository>
<digest>`` (a blob link); a statement that changes more than 100 rows sends ``r <repository>`` per
repository instead, and one across more than 100 repositories sends ``*``. Nothing on SQLite (its
workers see every commit through ``PRAGMA data_version``).

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None

CHANNEL = "dockyard_cache"
#: (table, the key's letter, the column that names the row within its repository)
TABLES = (("tags", "t", "name"), ("manifests", "m", "digest"), ("repository_blobs", "b", "digest"))
MANY = 100

FUNCTION = """
CREATE OR REPLACE FUNCTION dockyard_notify_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keys integer;
    repositories integer;
BEGIN
    SELECT count(*), count(DISTINCT repository) INTO keys, repositories FROM changed;
    IF keys <= {many} THEN
        PERFORM pg_notify('{channel}', k)
        FROM (SELECT DISTINCT '{letter} ' || repository || ' ' || {column} AS k FROM changed) AS d;
    ELSIF repositories <= {many} THEN
        PERFORM pg_notify('{channel}', k)
        FROM (SELECT DISTINCT 'r ' || repository AS k FROM changed) AS d;
    ELSE
        PERFORM pg_notify('{channel}', '*');
    END IF;
    RETURN NULL;
END
$$
"""

# A transition table is named per trigger, and one trigger may have only one event when it has one.
EVENTS = (("insert", "INSERT", "NEW"), ("update", "UPDATE", "NEW"), ("delete", "DELETE", "OLD"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, letter, column in TABLES:
        op.execute(
            FUNCTION.format(table=table, letter=letter, column=column, channel=CHANNEL, many=MANY)
        )
        for suffix, event, which in EVENTS:
            op.execute(
                f"CREATE TRIGGER dockyard_notify_{table}_{suffix} AFTER {event} ON {table} "
                f"REFERENCING {which} TABLE AS changed "
                f"FOR EACH STATEMENT EXECUTE FUNCTION dockyard_notify_{table}()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, _, _ in TABLES:
        for suffix, _, _ in EVENTS:
            op.execute(f"DROP TRIGGER IF EXISTS dockyard_notify_{table}_{suffix} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS dockyard_notify_{table}()")
