"""Versioned SQL migrations shipped in the package, recorded in `schema_migrations`.

Files are `NNN_name.sql`, statements separated by a `;` at the end of a
line, and `{{AUTO_ID}}`/`{{TABLE_OPTIONS}}` filled in by the dialect. MySQL
commits DDL as it goes, so a migration is written to be safe to re-run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from ratecared.db.database import Database, DatabaseError, DatabaseMissing, timestamp

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    text: str

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, database: Database) -> list[str]:
        body = "\n".join(line for line in self.text.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", database.dialect.migration(body), flags=re.M) if s.strip()]


def available() -> list[Migration]:
    found = []
    for entry in resources.files("ratecared.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


class MigrationChanged(Exception):
    """A migration already applied differs from the file shipped now: someone edited it.

    Not a DatabaseError: the database is fine, and retrying will not help.
    """


_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
          " version VARCHAR(16) NOT NULL PRIMARY KEY,"
          " name VARCHAR(255) NOT NULL,"
          " checksum CHAR(64) NOT NULL,"
          " applied_at DATETIME(3) NOT NULL)")
# MySQL commits DDL at once: a column added just before the migration's
# record failed to be written is there when the migration runs again.
_ADD_COLUMN = re.compile(r"^ALTER TABLE \S+ ADD COLUMN ", re.I)


def pending(database: Database) -> list[Migration]:
    """Migrations not yet recorded as applied, in order; it writes nothing, nor creates the file.

    Raises MigrationChanged when an applied migration's stored checksum is
    not the shipped file's.
    """
    try:
        applied = (dict(database.query("SELECT version, checksum FROM schema_migrations"))
                   if database.has_table("schema_migrations") else {})
    except DatabaseMissing:
        return available()
    shipped = available()
    for migration in shipped:
        stored = applied.get(migration.version)
        if stored is not None and stored != migration.checksum:
            raise MigrationChanged(
                f"migration {migration.filename} was changed after it was applied to {database.describe()}"
                f" (stored checksum {stored[:12]}…, the file's {migration.checksum[:12]}…);"
                " restore the shipped file: an applied migration is never edited, a new one is added")
    return [m for m in shipped if m.version not in applied]


def apply(database: Database) -> list[Migration]:
    """Apply what is pending, one migration at a time; return what was applied.

    This is what creates an SQLite database file, for `ratecared migrate` or
    with database.auto_migrate.
    """
    done = []
    database.create()
    database.execute(_TABLE)
    with database.named_lock("ratecared:migrate", wait=60) as got:
        if not got:
            raise DatabaseError("another process holds the migration lock")
        for migration in pending(database):
            for statement in migration.statements(database):
                try:
                    database.execute(statement)
                except DatabaseError as exc:
                    if _ADD_COLUMN.match(statement) and "duplicate column name" in str(exc).lower():
                        continue
                    raise DatabaseError(f"migration {migration.filename} failed: {exc}") from exc
            database.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, timestamp(datetime.now(timezone.utc))),
            )
            done.append(migration)
    return done
