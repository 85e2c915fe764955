"""The schema: Alembic migrations produce exactly the models, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bastion.store.engine import make_engine
from bastion.store.migrate import current_revision, upgrade
from bastion.store.models import Base


async def test_migrations_match_the_models_and_are_idempotent(database_url):
    engine = make_engine(database_url)
    try:
        await upgrade(engine)
        await upgrade(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
        assert diff == []
        assert await current_revision(engine) is not None
    finally:
        await engine.dispose()
