"""SQLite and PostgreSQL URLs for the suite; PostgreSQL gets a database of its own per run."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from sqlalchemy.engine import make_url

PG_ENV = "BASTION_TEST_PG_URL"


async def admin_execute(url: str, statement: str) -> None:
    import asyncpg

    parsed = make_url(url)
    conn = await asyncpg.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
                                 user=parsed.username or "postgres", password=parsed.password,
                                 database=parsed.database or "postgres", timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_pg_database() -> tuple[str, str] | None:
    """(url of a fresh database, its name), or None when no PostgreSQL is configured."""
    base = os.environ.get(PG_ENV)
    if not base:
        return None
    name = f"bastion_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_execute(base, f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False), name


def drop_pg_database(name: str) -> None:
    asyncio.run(admin_execute(os.environ[PG_ENV], f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def skip_without_pg() -> None:
    pytest.skip(f"PostgreSQL not configured: set {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
