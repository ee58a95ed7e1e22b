"""Database access: one adapter for SQLite and MySQL/MariaDB, and the migrations."""

from ratecared.db.database import (Database, DatabaseError, DatabaseMissing, IntegrityError, Probe, parse_timestamp,
                                   timestamp)

__all__ = ["Database", "DatabaseError", "DatabaseMissing", "IntegrityError", "Probe", "parse_timestamp", "timestamp"]
