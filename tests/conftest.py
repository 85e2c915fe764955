"""Suite-wide fixtures: one database per backend per run (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.engine import make_url

from tests.support.databases import admin_execute, create_pg_database, drop_pg_database, skip_without_pg

BACKENDS = ["sqlite", "postgresql"]
# One testbed per backend per run, shared by the integration and browser tests.
pytest_plugins = ["tests.support.testbed"]


@pytest.fixture(scope="session")
def pg_database():
    """A PostgreSQL database made for this run and dropped after it."""
    try:
        created = create_pg_database()
    except OSError as exc:
        pytest.skip(f"PostgreSQL configured but unreachable: {exc}")
    if created is None:
        skip_without_pg()
    url, name = created
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, tmp_path, request) -> str:
    """A fresh, empty database of the current backend for one test."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    base = request.getfixturevalue("pg_database")
    name = f"bastion_unit_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_execute(base, f'CREATE DATABASE "{name}"'))
    request.addfinalizer(lambda: asyncio.run(admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    return make_url(base).set(database=name).render_as_string(hide_password=False)
