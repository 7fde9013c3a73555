"""Whether a database carries the app's schema: the Alembic revision it is at, against the head
revision of the migrations shipped with this code (``/readyz``, ``doctor`` and ``serve`` ask)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATE_FIX = "run `hybrid-memory migrate` (or start `serve` with AUTO_MIGRATE=true)"


def _not_alembic_chatter(record: object) -> bool:
    """Keep "Running upgrade 0001 -> 0002"; drop the dialect announcements around it."""
    message = str(getattr(record, "msg", ""))
    return not message.startswith(("Context impl", "Will assume"))


def quiet_alembic() -> None:
    """Alembic announces its plugins ("setup plugin ...") at INFO when first imported, and its
    dialect ("Context impl ...", "Will assume transactional DDL") at every migration: not news
    at every start. Called before importing it."""
    import logging

    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    if _not_alembic_chatter not in migration.filters:
        migration.addFilter(_not_alembic_chatter)


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision of the shipped migrations (read from the scripts, once)."""
    quiet_alembic()
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {MIGRATIONS_DIR}")
    return head


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None  # None: never migrated (no alembic_version table, or it is empty)
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.up_to_date:
            return f"at the latest revision ({self.head})"
        if self.current is None:
            return f"not migrated: the app's tables are missing (latest revision {self.head})"
        return f"at revision {self.current}, this code needs {self.head}"


VERSION_TABLE = "alembic_version"


def schema_status(conn: sa.Connection) -> SchemaStatus:
    """The migration state of the database behind ``conn`` (reads ``alembic_version``; read
    directly: Alembic's MigrationContext would log its set-up at every readiness probe)."""
    current = None
    if sa.inspect(conn).has_table(VERSION_TABLE):
        current = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return SchemaStatus(current=current, head=head_revision())
