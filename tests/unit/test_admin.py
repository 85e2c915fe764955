"""Administrative operations on both backends: validation, conflicts, secrets sealed, every change audited."""

import asyncssh
import pytest
from sqlalchemy import func, select

from bastion.admin import account_context
from bastion.audit.log import verify_chain
from bastion.auth.passwords import WeakPassword
from bastion.errors import Conflict, NotFound, UsageError
from bastion.store.models import AuditEvent, Credential, Grant, Target, TargetAccount, User

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
USER_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


async def counts(store):
    async with store.db() as db:
        return {m.__name__: (await db.execute(select(func.count()).select_from(m))).scalar_one()
                for m in (User, Credential, Target, TargetAccount, Grant, AuditEvent)}


async def test_user_target_account_grant_flow_is_audited(store):
    admin = store.admin
    await admin.add_user("alice", roles=["user"], password="a-long-enough-password", ssh_keys=[USER_KEY])
    await admin.add_target("web01", "127.0.0.1", 2222, HOST_KEY)
    account = await admin.add_account("web01", "root", generate=True)
    assert account["public_key"].startswith("ssh-ed25519 ")
    grant = await admin.add_grant(user="alice", target="web01", account="root", actions=["shell", "exec"])
    assert [g["state"] for g in await admin.list_grants()] == ["active"]
    await admin.revoke_grant(grant["id"])
    assert [g["state"] for g in await admin.list_grants()] == ["revoked"]
    async with store.db() as db:
        types = [e.type for e in (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()]
        password = (await db.execute(select(Credential).where(Credential.kind == "password"))).scalar_one()
        sealed = (await db.execute(select(TargetAccount))).scalar_one()
    assert types == ["admin.user.add", "admin.target.add", "admin.account.add", "admin.grant.add",
                     "admin.grant.revoke"]
    assert password.public.startswith("$argon2id$")
    assert b"PRIVATE KEY" not in sealed.secret
    assert b"PRIVATE KEY" in store.vault.open(sealed.secret, account_context(sealed.target_id, "root"))
    assert (await verify_chain(store.db))[0]


async def test_secrets_never_reach_the_audit_log(store):
    await store.admin.add_user("bob", password="bobs-secret-password-123")
    await store.admin.add_target("web01", "127.0.0.1", 2222, HOST_KEY)
    await store.admin.add_account("web01", "deploy", password="the-target-password")
    async with store.db() as db:
        text = " ".join(str(e.details) for e in (await db.execute(select(AuditEvent))).scalars())
    assert "bobs-secret-password-123" not in text and "the-target-password" not in text


@pytest.mark.parametrize("call, error", [
    (lambda a: a.add_user("Bad Name"), UsageError),
    (lambda a: a.add_user("x:y"), UsageError),
    (lambda a: a.add_user("eve", roles=["root"]), UsageError),
    (lambda a: a.add_user("eve", password="short"), WeakPassword),
    (lambda a: a.add_user("eve", ssh_keys=["not a key"]), UsageError),
    (lambda a: a.add_user("eve", ssh_keys=["ssh-dss AAAAB3NzaC1kc3MAAACBAP"]), UsageError),
    (lambda a: a.add_target("t/1", "h", 22, HOST_KEY), UsageError),
    (lambda a: a.add_target("t1", "bad host", 22, HOST_KEY), UsageError),
    (lambda a: a.add_target("t1", "127.0.0.1", 0, HOST_KEY), UsageError),
    (lambda a: a.add_target("t1", "127.0.0.1", 22, "garbage"), UsageError),
    (lambda a: a.add_target("t1", "127.0.0.1", 22, ""), UsageError),
    (lambda a: a.add_account("nosuch", "root", generate=True), NotFound),
    (lambda a: a.add_account("web01", "root", private_key=b"-----BEGIN junk"), UsageError),
    (lambda a: a.add_account("web01", "bad login!", generate=True), UsageError),
    (lambda a: a.add_grant(user="nobody", target="web01", account="root"), NotFound),
    (lambda a: a.add_grant(user="alice", target="web01", account="root", actions=["sudo"]), UsageError),
    (lambda a: a.add_grant(user="alice", target="web01", account="root", until="tomorrow"), UsageError),
    (lambda a: a.add_grant(user="alice", group="ops", target="web01", account="root"), UsageError),
    (lambda a: a.revoke_grant(999), NotFound),
])
async def test_bad_input_is_refused_and_changes_nothing(store, call, error):
    await store.admin.add_user("alice", password="a-long-enough-password")
    await store.admin.add_target("web01", "127.0.0.1", 2222, HOST_KEY)
    await store.admin.add_account("web01", "root", generate=True)
    before = await counts(store)
    with pytest.raises(error):
        await call(store.admin)
    assert await counts(store) == before


async def test_duplicates_conflict(store):
    await store.admin.add_user("alice")
    with pytest.raises(Conflict):
        await store.admin.add_user("alice")
    await store.admin.add_target("web01", "127.0.0.1", 2222, HOST_KEY)
    with pytest.raises(Conflict):
        await store.admin.add_target("web01", "127.0.0.1", 2223, HOST_KEY)
    await store.admin.add_account("web01", "root", generate=True)
    with pytest.raises(Conflict):
        await store.admin.add_account("web01", "root", generate=True)


async def test_audit_chain_detects_edit_delete_and_truncation(store):
    for i in range(5):
        await store.admin.add_user(f"user{i}")
    assert (await verify_chain(store.db))[0]
    async with store.db() as db, db.begin():
        row = (await db.execute(select(AuditEvent).where(AuditEvent.seq == 3))).scalar_one()
        row.actor = "someone-else"
    ok, message = await verify_chain(store.db)
    assert not ok and "seq 3" in message
    async with store.db() as db, db.begin():
        row = (await db.execute(select(AuditEvent).where(AuditEvent.seq == 3))).scalar_one()
        row.actor = "tester"
    assert (await verify_chain(store.db))[0]
    async with store.db() as db, db.begin():
        await db.delete((await db.execute(select(AuditEvent).where(AuditEvent.seq == 2))).scalar_one())
    ok, message = await verify_chain(store.db)
    assert not ok and "seq 3" in message


async def test_audit_truncation_of_the_tail_is_detected(store):
    for i in range(3):
        await store.admin.add_user(f"user{i}")
    async with store.db() as db, db.begin():
        await db.delete((await db.execute(select(AuditEvent).where(AuditEvent.seq == 3))).scalar_one())
    ok, message = await verify_chain(store.db)
    assert not ok and "head" in message
