"""The decision point: grants, expiry, revocation, levels, and who may mint authorizations."""

import dataclasses
import datetime as dt

import pytest

from bastion.auth.identity import Identity
from bastion.policy import (ACTIONS, Allow, AllowChannel, ChannelAuthorization, Deny, GrantFacts, StepUp, TargetAuthorization,
                            TargetFacts, TargetRef, decide, decide_channel, require_minted)

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
ALICE = Identity(1, "alice", ("user",), (), 1, ("password",), "127.0.0.1")
WEB01 = TargetRef(1, "web01", "127.0.0.1", 22, "ssh-ed25519 AAAA")


def grant(gid=1, account="root", actions=("shell",), until=None, since=None, level=None, revoked=False):
    return GrantFacts(gid, 10 if account == "root" else 11, account, frozenset(actions), since, until, level, revoked)


def run(grants, identity=ALICE, target=WEB01, account=None, active=True, target_level=None, account_levels=None,
        device_policy="off"):
    facts = TargetFacts(active, target, target_level, account_levels or {}, grants, device_policy)
    return decide(identity, facts, account, 1, NOW)


def test_current_grant_allows_with_its_actions():
    decision = run([grant(actions=("shell", "exec"))])
    assert isinstance(decision, Allow)
    assert decision.authorization.actions == {"shell", "exec"}
    assert decision.authorization.account.login == "root"


@pytest.mark.parametrize("bad", [
    grant(revoked=True),
    grant(until=NOW),
    grant(until=NOW - dt.timedelta(seconds=1)),
    grant(since=NOW + dt.timedelta(minutes=1)),
])
def test_revoked_expired_or_future_grants_deny(bad):
    assert isinstance(run([bad]), Deny)


def test_unknown_target_and_no_grant_and_disabled_user_all_deny():
    assert isinstance(run([], target=None), Deny)
    assert isinstance(run([]), Deny)
    assert isinstance(run([grant()], active=False), Deny)


def test_account_must_match_when_named():
    assert isinstance(run([grant(account="root")], account="deploy"), Deny)
    assert isinstance(run([grant(account="root")], account="root"), Allow)


def test_two_accounts_without_a_name_is_ambiguous():
    decision = run([grant(1, "root"), grant(2, "deploy")])
    assert isinstance(decision, Deny) and decision.ambiguous_accounts == ("deploy", "root")


@pytest.mark.parametrize("kwargs", [{"target_level": 2}, {"account_levels": {10: 3}}])
def test_highest_demand_wins_and_means_step_up(kwargs):
    decision = run([grant()], **kwargs)
    assert isinstance(decision, StepUp) and decision.level >= 2


def test_grant_level_demands_step_up():
    assert run([grant(level=2)]) == StepUp(2)
    high = Identity(1, "alice", ("user",), (), 2, ("password", "totp"), "127.0.0.1")
    assert isinstance(run([grant(level=2)], identity=high), Allow)


def test_channel_needs_the_action_and_an_unexpired_authorization():
    authz = run([grant(actions=("exec",), until=NOW + dt.timedelta(minutes=5))]).authorization
    assert isinstance(decide_channel(authz, "exec", NOW), AllowChannel)
    assert isinstance(decide_channel(authz, "shell", NOW), Deny)
    assert isinstance(decide_channel(authz, "exec", NOW + dt.timedelta(minutes=5)), Deny)


def test_authorizations_cannot_be_forged_outside_policy():
    authz = run([grant()]).authorization
    assert authz.minted
    forged = [TargetAuthorization(ALICE, WEB01, authz.account, frozenset({"shell"}), (1,), None, NOW),
              dataclasses.replace(authz, actions=frozenset(ACTIONS)),
              ChannelAuthorization(authz, "shell")]
    for value in forged:
        assert not value.minted
        with pytest.raises(PermissionError):
            require_minted(value)
    with pytest.raises(PermissionError):
        decide_channel(forged[1], "shell", NOW)
    with pytest.raises(TypeError):
        TargetAuthorization(ALICE, WEB01, authz.account, frozenset({"shell"}), (1,), None, NOW, "off", object())


def test_required_device_policy_denies_without_a_proven_device_with_a_message():
    decision = run([grant()], device_policy="required")
    assert isinstance(decision, Deny) and "bound device" in decision.user_message
    on_device = Identity(1, "alice", ("user",), (), 1, ("password",), "10.0.0.2", device_id=7, device_proof="mac")
    assert isinstance(run([grant()], identity=on_device, device_policy="required"), Allow)


def test_advisory_device_policy_allows_and_flags_for_audit():
    decision = run([grant()], device_policy="advisory")
    assert isinstance(decision, Allow) and decision.authorization.device_unproven
    assert not run([grant()], device_policy="off").authorization.device_unproven


def test_device_demand_is_checked_only_for_granted_targets():
    # unknown/forbidden targets keep their generic answer even under a device policy
    decision = run([], device_policy="required")
    assert isinstance(decision, Deny) and decision.user_message == ""


# --- datasets -------------------------------------------------------------------------------------------------

from bastion.policy import AllowDataset, DatasetFacts, DatasetGrantFacts, DatasetRef, decide_dataset  # noqa: E402

REPORT = DatasetRef(7, "q3-report", "confidential", 1)


def dgrant(gid=1, mode="view", until=None, max_downloads=None, downloads=0, level=None, mask="none",
           watermark=True, revoked=False, approved=None, open_copy=None):
    return DatasetGrantFacts(gid, mode, until, max_downloads, downloads, level, mask, watermark, revoked, approved,
                             open_copy)


def dfacts(grants, published=True, window=(None, None), level=1, rows=0, bytes_=0, caps=(100, 1000)):
    return DatasetFacts(True, REPORT, published, window[0], window[1], level, grants, rows, bytes_, *caps)


@pytest.mark.parametrize("facts", [
    dfacts([dgrant()], published=False),
    dfacts([dgrant()], window=(NOW + dt.timedelta(hours=1), None)),
    dfacts([dgrant()], window=(None, NOW)),
    dfacts([dgrant(revoked=True)]),
    dfacts([dgrant(until=NOW)]),
    dfacts([]),
    DatasetFacts(True, None, False, None, None, 1),
])
def test_unpublished_expired_revoked_ungranted_and_missing_datasets_all_deny(facts):
    assert isinstance(decide_dataset(ALICE, facts, "view", NOW), Deny)


def test_view_grant_cannot_download_and_download_grant_can_view():
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="view")]), "download", NOW), Deny)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download")]), "view", NOW), AllowDataset)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download")]), "download", NOW), AllowDataset)


def test_download_quota_and_approval():
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download", max_downloads=2, downloads=2)]),
                                     "download", NOW), Deny)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download-with-approval")]), "download", NOW), Deny)
    allowed = decide_dataset(ALICE, dfacts([dgrant(mode="download-with-approval", approved=5)]), "download", NOW)
    assert isinstance(allowed, AllowDataset) and allowed.authorization.request_id == 5


def test_an_approval_grant_shows_nothing_until_approved_and_never_outranks_a_masked_view():
    waiting = dgrant(2, mode="download-with-approval")
    assert isinstance(decide_dataset(ALICE, dfacts([waiting]), "view", NOW), Deny)
    view = decide_dataset(ALICE, dfacts([dgrant(1, mask="pii"), waiting]), "view", NOW)
    assert isinstance(view, AllowDataset) and (view.authorization.grant_id, view.authorization.mask) == (1, "pii")
    approved = decide_dataset(ALICE, dfacts([dgrant(2, mode="download-with-approval", approved=7)]), "view", NOW)
    assert isinstance(approved, AllowDataset)


def test_classification_and_grant_levels_demand_step_up():
    assert decide_dataset(ALICE, dfacts([dgrant()], level=2), "view", NOW) == StepUp(2)
    assert decide_dataset(ALICE, dfacts([dgrant(level=3)]), "view", NOW) == StepUp(3)


def test_daily_limits_refuse():
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant()], rows=100), "view", NOW), Deny)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download")], bytes_=1000), "download", NOW), Deny)


def test_the_least_masked_qualifying_grant_decides_the_view():
    decision = decide_dataset(ALICE, dfacts([dgrant(1, mask="pii"), dgrant(2, mask="none"),
                                             dgrant(3, mask="none", level=3)]), "view", NOW)
    assert decision.authorization.grant_id == 2 and decision.authorization.mask == "none"
    forged = dataclasses.replace(decision.authorization, mask="none")
    assert decision.authorization.minted and not forged.minted


def test_unknown_actions_disabled_users_and_unknown_grant_modes_deny():
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download")]), "delete", NOW), Deny)
    disabled = dataclasses.replace(dfacts([dgrant(mode="download")]), user_active=False)
    for action in ("view", "download"):
        assert isinstance(decide_dataset(ALICE, disabled, action, NOW), Deny)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="admin")]), "view", NOW), Deny)


def test_publish_window_edges():
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant()], window=(NOW, None)), "view", NOW), AllowDataset)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant()], window=(None, NOW + dt.timedelta(seconds=1))),
                                     "view", NOW), AllowDataset)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(until=NOW + dt.timedelta(seconds=1))]), "view", NOW),
                      AllowDataset)


def test_step_up_asks_for_the_lowest_level_that_would_do():
    low = dataclasses.replace(ALICE, level=1)
    assert decide_dataset(low, dfacts([dgrant(1, level=3), dgrant(2, level=2)]), "view", NOW) == StepUp(2)
    # A masked grant reachable now beats stepping up for an unmasked one.
    decision = decide_dataset(low, dfacts([dgrant(1, level=3), dgrant(2, mask="pii")]), "view", NOW)
    assert isinstance(decision, AllowDataset) and decision.authorization.mask == "pii"


def test_a_download_spends_a_plain_grant_before_an_approval():
    decision = decide_dataset(ALICE, dfacts([dgrant(1, mode="download-with-approval", approved=9),
                                             dgrant(2, mode="download")]), "download", NOW)
    assert decision.authorization.grant_id == 2 and decision.authorization.request_id is None
    used_up = decide_dataset(ALICE, dfacts([dgrant(1, mode="download-with-approval", approved=9),
                                            dgrant(2, mode="download", max_downloads=1, downloads=1)]),
                             "download", NOW)
    assert used_up.authorization.grant_id == 1 and used_up.authorization.request_id == 9


def test_an_open_copy_carries_the_rest_of_a_download_past_its_quota_and_used_approval():
    used_up = decide_dataset(ALICE, dfacts([dgrant(mode="download", max_downloads=1, downloads=1, open_copy=4)]),
                             "download", NOW)
    assert isinstance(used_up, AllowDataset) and used_up.authorization.copy_id == 4
    approval_used = decide_dataset(ALICE, dfacts([dgrant(mode="download-with-approval", downloads=1, open_copy=6)]),
                                   "download", NOW)
    assert isinstance(approval_used, AllowDataset)
    assert (approval_used.authorization.copy_id, approval_used.authorization.request_id) == (6, None)
    # It joins the copy already counted before it counts under a plain grant or spends an approval.
    joined = decide_dataset(ALICE, dfacts([dgrant(1, mode="download"), dgrant(2, mode="download-with-approval",
                                                                              approved=9, open_copy=3)]),
                            "download", NOW)
    assert (joined.authorization.grant_id, joined.authorization.copy_id) == (2, 3)
    # It opens nothing else: no view of an approval-gated grant, no copy id outside downloads, and every other
    # refusal (level, revocation, daily bytes) still stands.
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download-with-approval", open_copy=6)]), "view",
                                     NOW), Deny)
    assert decide_dataset(ALICE, dfacts([dgrant(mode="download", open_copy=4)]), "view", NOW).authorization.copy_id \
        is None
    assert decide_dataset(ALICE, dfacts([dgrant(mode="download", level=3, open_copy=4)]), "download", NOW) == StepUp(3)
    for grant, bytes_ in ((dgrant(mode="download", revoked=True, open_copy=4), 0),
                          (dgrant(mode="download", until=NOW, open_copy=4), 0),
                          (dgrant(mode="view", open_copy=4), 0),
                          (dgrant(mode="download", open_copy=4), 1000)):
        assert isinstance(decide_dataset(ALICE, dfacts([grant], bytes_=bytes_), "download", NOW), Deny)


def test_limits_apply_only_to_their_own_action():
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download")], rows=100), "download", NOW),
                      AllowDataset)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant(mode="download")], bytes_=1000), "view", NOW),
                      AllowDataset)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant()], rows=99), "view", NOW), AllowDataset)
    assert isinstance(decide_dataset(ALICE, dfacts([dgrant()], rows=10**9, caps=(0, 0)), "view", NOW), AllowDataset)


def test_a_used_up_or_unapproved_download_grant_is_named_in_the_audit_reason():
    for grant in (dgrant(mode="download", max_downloads=1, downloads=1), dgrant(mode="download-with-approval")):
        decision = decide_dataset(ALICE, dfacts([grant], bytes_=1000), "download", NOW)
        assert isinstance(decision, Deny) and decision.reason.startswith("no usable download grant")


async def test_one_recheck_pass_decides_once_per_identity_and_never_mixes_users(store):
    import asyncssh
    from sqlalchemy import select

    from bastion.config import load_config
    from bastion.policy import Policy
    from bastion.store.models import User

    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    await store.admin.add_target("web01", "127.0.0.1", 2222, host_key)
    await store.admin.add_account("web01", "root", generate=True)
    for name in ("alice", "bob"):
        await store.admin.add_user(name, password=f"correct-horse-{name}-battery")
        await store.admin.add_grant(user=name, target="web01", account="root", actions=["shell"])
    async with store.db() as db:
        ids = {u.name: u.id for u in (await db.execute(select(User))).scalars()}
    policy = Policy(store.db, load_config("/nonexistent", environ={}))
    now = store.clock.now()
    channels = {}
    for name, port in (("alice", 40001), ("alice", 40002), ("bob", 40003)):
        identity = Identity(ids[name], name, ("user",), (), 1, ("password",), "127.0.0.1", port)
        decision = await policy.authorize_target(identity, "web01", "root", now)
        channels[(name, port)] = decide_channel(decision.authorization, "shell", now).authorization
    bob_grant = [g for g in await store.admin.list_grants() if g["subject"] == "user:bob"][0]
    await store.admin.revoke_grant(bob_grant["id"])
    calls = []
    original = policy.authorize_target

    async def counted(*args):
        calls.append(args[0].name)
        return await original(*args)

    policy.authorize_target = counted
    memo: dict = {}
    results = {key: await policy.recheck(channel, now, memo) for key, channel in channels.items()}
    assert results == {("alice", 40001): True, ("alice", 40002): True, ("bob", 40003): False}
    assert sorted(calls) == ["alice", "bob"]  # alice's two sessions share one decision
