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

from ratecared.db.database import Database, DatabaseError, timestamp

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    text: str

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


def _ensure_table(database: Database) -> None:
    database.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version VARCHAR(16) NOT NULL PRIMARY KEY,"
        " name VARCHAR(255) NOT NULL,"
        " checksum CHAR(64) NOT NULL,"
        " applied_at DATETIME(3) NOT NULL)"
    )


def pending(database: Database) -> list[Migration]:
    """Migrations not yet recorded as applied, in order."""
    _ensure_table(database)
    applied = {row[0] for row in database.query("SELECT version FROM schema_migrations")}
    return [m for m in available() if m.version not in applied]


def apply(database: Database) -> list[Migration]:
    """Apply what is pending, one migration at a time; return what was applied."""
    done = []
    with _migration_lock(database):
        for migration in pending(database):
            for statement in migration.statements(database):
                try:
                    database.execute(statement)
                except DatabaseError as exc:
                    raise DatabaseError(f"migration {migration.version}_{migration.name} failed: {exc}") from exc
            database.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, timestamp(datetime.now(timezone.utc))),
            )
            done.append(migration)
    return done


class _migration_lock:
    """Two daemons started together on one MySQL must not both migrate."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __enter__(self) -> None:
        if self.database.name == "mysql":
            got = self.database.query("SELECT GET_LOCK('ratecared:migrate', 60)")[0][0]
            if got != 1:
                raise DatabaseError("another process holds the migration lock")

    def __exit__(self, *exc: object) -> None:
        if self.database.name == "mysql":
            try:
                self.database.query("SELECT RELEASE_LOCK('ratecared:migrate')")
            except DatabaseError:
                pass
