"""Publishing fixtures: services over the unit `store` (both backends), a catalog, users, helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from bastion.auth.identity import Identity
from bastion.config import env_name, load_config
from bastion.policy import AllowDataset, Policy
from bastion.publish.catalog import Catalog
from bastion.store.models import (AuditEvent, Blob, DailyUsage, Dataset, DatasetFile, DatasetGrant,
                                  DownloadRequest)

TABLES = (Dataset, DatasetFile, Blob, DatasetGrant, DownloadRequest, DailyUsage, AuditEvent)


@pytest.fixture
def make_services(store, tmp_path):
    """Services-shaped objects (config, db, vault, audit, clock, policy) with chosen settings."""

    def make(**settings):
        environ = {env_name(name.replace("__", ".")): str(value) for name, value in settings.items()}
        config = load_config(tmp_path / "data", environ=environ)
        policy = Policy(store.db, config)
        return SimpleNamespace(config=config, db=store.db, vault=store.vault, audit=store.audit, clock=store.clock,
                               policy=policy)

    return make


@pytest.fixture
def services(make_services):
    return make_services()


@pytest.fixture
def catalog(services):
    return Catalog.from_services(services, actor="tester", source="local")


@pytest.fixture
async def users(store):
    """alice (user, group analysts), bob (user), carol (admin); returns name → Identity at level 2."""
    out = {}
    for name, roles, groups in (("alice", ["user"], ["analysts"]), ("bob", ["user"], []), ("carol", ["admin"], [])):
        await store.admin.add_user(name, roles=roles, groups=groups)
    async with store.db() as db:
        from bastion.store.models import User

        for user in (await db.execute(select(User))).scalars():
            out[user.name] = Identity(user.id, user.name, tuple(user.roles), tuple(user.groups), 2, ("password",),
                                      "192.0.2.7")
    return out


async def counts(db) -> dict[str, int]:
    async with db() as session:
        return {m.__name__: (await session.execute(select(func.count()).select_from(m))).scalar_one()
                for m in TABLES}


def blob_files(services) -> list[str]:
    """Every file in the blob directory (staging area included)."""
    from bastion.publish.blobs import blob_dir

    root = blob_dir(services.config)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def authorize(services, identity, name, action="view"):
    decision = await services.policy.authorize_dataset(identity, name, action, services.clock.now())
    assert isinstance(decision, AllowDataset), decision
    return decision.authorization


async def audit_types(db) -> list[str]:
    async with db() as session:
        return [e.type for e in (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()]


async def audit_events(db, prefix: str) -> list[AuditEvent]:
    async with db() as session:
        return list((await session.execute(select(AuditEvent).where(AuditEvent.type.startswith(prefix))
                                            .order_by(AuditEvent.seq))).scalars())
