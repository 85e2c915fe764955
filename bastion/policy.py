"""The one decision point: may this identity use this target, account and action now?

Only this module creates `TargetAuthorization` and `ChannelAuthorization`; upstream
connections and bridges accept nothing else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.auth.identity import Identity
from bastion.auth.devices import strongest
from bastion.store.models import Grant, GroupPolicy, Target, TargetAccount, User

ACTIONS = ("shell", "exec", "sftp-read", "sftp-write", "forward")
_MINT = object()  # only this module holds it


@dataclass(frozen=True)
class TargetRef:
    id: int
    name: str
    host: str
    port: int
    host_keys: str


@dataclass(frozen=True)
class AccountRef:
    id: int
    login: str


@dataclass(frozen=True)
class TargetAuthorization:
    """Permission for one identity to reach one account on one target, until `valid_until`."""

    identity: Identity
    target: TargetRef
    account: AccountRef
    actions: frozenset[str]
    grant_ids: tuple[int, ...]
    valid_until: dt.datetime | None
    decided_at: dt.datetime
    device_policy: str = "off"
    # Not an init field: dataclasses.replace() and direct construction yield an unminted copy.
    _mint: object = field(init=False, repr=False, compare=False, default=None)

    @property
    def minted(self) -> bool:
        return self._mint is _MINT

    @property
    def device_unproven(self) -> bool:
        """Allowed under an advisory device policy without an approved device (to be audited)."""
        return self.device_policy == "advisory" and self.identity.device_id is None

    def allows(self, action: str) -> bool:
        return action in self.actions


@dataclass(frozen=True)
class ChannelAuthorization:
    """Permission to open one channel of one kind under a TargetAuthorization."""

    target_authorization: TargetAuthorization
    action: str
    _mint: object = field(init=False, repr=False, compare=False, default=None)

    @property
    def minted(self) -> bool:
        return self._mint is _MINT and self.target_authorization.minted


def _minted(value):
    object.__setattr__(value, "_mint", _MINT)
    return value


def require_minted(value: "TargetAuthorization | ChannelAuthorization") -> None:
    """Consumers call this: an authorization not made by this module is refused (fail closed)."""
    if not getattr(value, "minted", False):
        raise PermissionError("authorization was not issued by the policy")


@dataclass(frozen=True)
class Allow:
    authorization: TargetAuthorization


@dataclass(frozen=True)
class AllowChannel:
    authorization: ChannelAuthorization


@dataclass(frozen=True)
class StepUp:
    level: int
    reason: str = "higher authentication level required"


@dataclass(frozen=True)
class Deny:
    reason: str  # for the audit log; users see one generic message unless `user_message` is set
    ambiguous_accounts: tuple[str, ...] = ()
    user_message: str = ""


DEVICE_REQUIRED = ("this access requires a bound device: connect from an approved device "
                   "(its MAC on the bastion's network) or log in with the device's own SSH key")


Decision = Allow | StepUp | Deny


@dataclass(frozen=True)
class GrantFacts:
    """What a grant says, detached from the database."""

    id: int
    account_id: int
    account_login: str
    actions: frozenset[str]
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    min_level: int | None
    revoked: bool


def grant_is_current(grant: GrantFacts, now: dt.datetime) -> bool:
    if grant.revoked:
        return False
    if grant.valid_from is not None and now < grant.valid_from:
        return False
    if grant.valid_until is not None and now >= grant.valid_until:
        return False
    return True


@dataclass(frozen=True)
class TargetFacts:
    """Everything a target decision depends on, detached from the database."""

    user_active: bool
    target: TargetRef | None
    target_min_level: int | None = None
    account_levels: dict[int, int | None] = field(default_factory=dict)
    grants: Sequence[GrantFacts] = ()
    device_policy: str = "off"  # strongest of the user's, their groups', the target's and the default


def decide(identity: Identity, facts: TargetFacts, account_login: str | None, default_level: int,
           now: dt.datetime) -> Decision:
    """Pure decision from facts; no I/O."""
    if not facts.user_active:
        return Deny("user disabled")
    target = facts.target
    if target is None:
        return Deny("no such target")
    current = [g for g in facts.grants if grant_is_current(g, now)]
    if account_login is not None:
        current = [g for g in current if g.account_login == account_login]
    if not current:
        return Deny("no current grant")
    logins = sorted({g.account_login for g in current})
    if len(logins) > 1:
        return Deny("several accounts granted", ambiguous_accounts=tuple(logins))
    account_id = current[0].account_id
    if facts.device_policy == "required" and identity.device_id is None:
        return Deny("no approved device", user_message=DEVICE_REQUIRED)
    # The highest demand of target, account and grants wins; below it the user must step up.
    demanded = max([facts.target_min_level or default_level, facts.account_levels.get(account_id) or 1]
                   + [g.min_level or 1 for g in current])
    if identity.level < demanded:
        return StepUp(demanded)
    actions = frozenset().union(*(g.actions for g in current))
    untils = [g.valid_until for g in current]
    valid_until = None if any(u is None for u in untils) else max(u for u in untils if u is not None)
    return Allow(_minted(TargetAuthorization(
        identity=identity, target=target, account=AccountRef(account_id, logins[0]), actions=actions,
        grant_ids=tuple(sorted(g.id for g in current)), valid_until=valid_until, decided_at=now,
        device_policy=facts.device_policy)))


def decide_channel(authorization: TargetAuthorization, action: str, now: dt.datetime) -> AllowChannel | Deny:
    """May a channel of kind `action` open under this authorization at `now`?"""
    if authorization.valid_until is not None and now >= authorization.valid_until:
        return Deny("grant expired")
    if action not in authorization.actions:
        return Deny(f"action {action} not granted")
    require_minted(authorization)
    return AllowChannel(_minted(ChannelAuthorization(authorization, action)))


@dataclass(frozen=True)
class GrantedTarget:
    """One line of a user's menu: a target and an account they may use."""

    target: str
    account: str
    actions: frozenset[str]


class Policy:
    """Loads the facts a decision needs and hands them to `decide`."""

    def __init__(self, sessionmaker: async_sessionmaker, settings: Mapping[str, Any]):
        self._sessionmaker = sessionmaker
        self._settings = settings  # the global policy, read at every decision: runtime changes apply at once

    @property
    def _default_level(self) -> int:
        return self._settings["auth.default_min_level"]

    @property
    def _default_device_policy(self) -> str:
        return self._settings["auth.device_policy"]

    def _dataset_level(self, classification: str) -> int:
        # An unknown classification demands the highest level (fail closed).
        known = ("public", "internal", "confidential", "secret")
        return self._settings[f"publish.level_{classification}"] if classification in known else 3

    async def _user_grants(self, db, user: User, target_id: int | None = None) -> list[tuple[Grant, TargetAccount]]:
        subjects = or_((Grant.subject_kind == "user") & (Grant.subject == user.name),
                       (Grant.subject_kind == "group") & (Grant.subject.in_(list(user.groups or []))))
        query = select(Grant, TargetAccount).join(TargetAccount, Grant.account_id == TargetAccount.id).where(subjects)
        if target_id is not None:
            query = query.where(Grant.target_id == target_id)
        return list((await db.execute(query)).all())

    @staticmethod
    def _facts(rows: Iterable[tuple[Grant, TargetAccount]]) -> list[GrantFacts]:
        return [GrantFacts(g.id, a.id, a.login, frozenset(g.actions), g.valid_from, g.valid_until, g.min_level,
                           g.revoked_at is not None) for g, a in rows]

    async def authorize_target(self, identity: Identity, target_name: str, account_login: str | None,
                               now: dt.datetime) -> Decision:
        async with self._sessionmaker() as db:
            user = await db.get(User, identity.user_id)
            target = (await db.execute(select(Target).where(Target.name == target_name))).scalar_one_or_none()
            if user is None:
                return Deny("no such user")
            if target is None:
                return decide(identity, TargetFacts(user.status == "active", None), account_login,
                              self._default_level, now)
            rows = await self._user_grants(db, user, target.id)
            groups = list(user.groups or [])
            group_policies = [g.device_policy for g in (await db.execute(
                select(GroupPolicy).where(GroupPolicy.name.in_(groups)))).scalars()] if groups else []
        facts = TargetFacts(
            user.status == "active", TargetRef(target.id, target.name, target.host, target.port, target.host_keys),
            target.min_level, {a.id: a.min_level for _, a in rows}, self._facts(rows),
            strongest(self._default_device_policy, user.device_policy, target.device_policy, *group_policies))
        return decide(identity, facts, account_login, self._default_level, now)

    async def granted_targets(self, identity: Identity, now: dt.datetime) -> list[GrantedTarget]:
        """Targets and accounts this identity holds a current grant for (menu)."""
        async with self._sessionmaker() as db:
            user = await db.get(User, identity.user_id)
            if user is None or user.status != "active":
                return []
            rows = await self._user_grants(db, user)
            names = {t.id: t.name for t in (await db.execute(select(Target))).scalars()}
        merged: dict[tuple[str, str], set[str]] = {}
        for grant, account in rows:
            facts = self._facts([(grant, account)])[0]
            if grant_is_current(facts, now):
                merged.setdefault((names[grant.target_id], account.login), set()).update(grant.actions)
        return [GrantedTarget(t, a, frozenset(acts)) for (t, a), acts in sorted(merged.items())]

    async def device_policy(self, identity: Identity) -> str:
        """The device policy of a login that names no target (the `datasets` login): the strictest of the
        default, the user's and their groups' (a user gone since login gets the strictest)."""
        async with self._sessionmaker() as db:
            user = await db.get(User, identity.user_id)
            if user is None:
                return "required"
            groups = list(user.groups or [])
            group_policies = [g.device_policy for g in (await db.execute(
                select(GroupPolicy).where(GroupPolicy.name.in_(groups)))).scalars()] if groups else []
        return strongest(self._default_device_policy, user.device_policy, *group_policies)

    async def _dataset_facts(self, identity: Identity, name: str, now: dt.datetime,
                             path: str | None = None) -> "DatasetFacts":
        from bastion.publish.copies import open_copies
        from bastion.publish.paths import check_relpath

        if path is not None:
            try:
                path = check_relpath(path)
            except ValueError:
                path = None  # no file of any dataset: the download itself refuses it
        from bastion.store.models import DailyUsage, Dataset, DatasetGrant, DownloadRequest

        async with self._sessionmaker() as db:
            user = await db.get(User, identity.user_id)
            dataset = (await db.execute(select(Dataset).where(Dataset.name == name[:64]))).scalar_one_or_none()
            if user is None or dataset is None:
                return DatasetFacts(user is not None and user.status == "active", None, False, None, None, 3)
            groups = list(user.groups or [])
            subjects = or_((DatasetGrant.subject_kind == "user") & (DatasetGrant.subject == user.name),
                           (DatasetGrant.subject_kind == "group") & (DatasetGrant.subject.in_(groups)))
            grants = (await db.execute(select(DatasetGrant).where(DatasetGrant.dataset_id == dataset.id, subjects)))\
                .scalars().all()
            requests = (await db.execute(select(DownloadRequest).where(
                DownloadRequest.user_id == user.id, DownloadRequest.status == "approved",
                DownloadRequest.grant_id.in_([g.id for g in grants] or [-1])))).scalars().all()
            usage = await db.get(DailyUsage, (user.id, now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")))
            copies = await open_copies(db, [g.id for g in grants], user.id, dataset.id, dataset.current_version, now,
                                       path)
        approved = {r.grant_id: r.id for r in requests if r.expires_at is None or now < r.expires_at}
        facts = [DatasetGrantFacts(g.id, g.mode, g.valid_until, g.max_downloads, g.downloads, g.min_level, g.mask,
                                   g.watermark, g.revoked_at is not None, approved.get(g.id), copies.get(g.id))
                 for g in grants]
        return DatasetFacts(user.status == "active",
                            DatasetRef(dataset.id, dataset.name, dataset.classification, dataset.current_version),
                            dataset.published, dataset.publish_from, dataset.publish_until,
                            self._dataset_level(dataset.classification), facts,
                            usage.rows_viewed if usage else 0, usage.bytes_downloaded if usage else 0,
                            self._settings["publish.rows_per_day"], self._settings["publish.bytes_per_day"])

    async def authorize_dataset(self, identity: Identity, name: str, action: str, now: dt.datetime,
                                path: str | None = None) -> "AllowDataset | StepUp | Deny":
        """May this identity view or download dataset `name` now? (Loads the facts, then decides.)

        A download that names its file (`path`) joins an open copy only if that copy has not served the
        file yet; otherwise the grant is chosen as for a new download.
        """
        return decide_dataset(identity, await self._dataset_facts(identity, name, now, path), action, now)

    async def granted_datasets(self, identity: Identity, now: dt.datetime) -> list["GrantedDataset"]:
        """Published datasets this identity holds a current grant for, each with its view and download decision.

        Anything else (unpublished, expired, revoked, ungranted) is simply absent, as if it did not exist.
        """
        from bastion.store.models import Dataset, DatasetGrant

        async with self._sessionmaker() as db:
            user = await db.get(User, identity.user_id)
            if user is None or user.status != "active":
                return []
            subjects = or_((DatasetGrant.subject_kind == "user") & (DatasetGrant.subject == user.name),
                           (DatasetGrant.subject_kind == "group")
                           & (DatasetGrant.subject.in_(list(user.groups or []))))
            rows = (await db.execute(select(Dataset.name, Dataset.description).join(
                DatasetGrant, DatasetGrant.dataset_id == Dataset.id).where(subjects).distinct()
                .order_by(Dataset.name))).all()
        out = []
        for name, description in rows:
            facts = await self._dataset_facts(identity, name, now)
            if not _visible(facts, now) or not _current_dataset_grants(facts, now):
                continue
            modes = {g.mode for g in _current_dataset_grants(facts, now)}
            download_mode = "download" if "download" in modes else \
                "download-with-approval" if "download-with-approval" in modes else None
            out.append(GrantedDataset(facts.dataset.name, facts.dataset.classification, description or "",
                                      facts.dataset.version, decide_dataset(identity, facts, "view", now),
                                      decide_dataset(identity, facts, "download", now), download_mode))
        return out

    async def recheck(self, channel: ChannelAuthorization, now: dt.datetime, memo: dict | None = None) -> bool:
        """Does a live channel's permission still hold: user active, a current grant with its action?

        `memo`, kept by the caller for one pass over many live channels, loads the facts once per identity,
        target and account (a thousand sessions of one user and target cost one decision, not a thousand).
        """
        target_auth = channel.target_authorization
        key = (replace(target_auth.identity, source_port=0), target_auth.target.name, target_auth.account.login)
        decision = memo.get(key) if memo is not None else None
        if decision is None:
            decision = await self.authorize_target(target_auth.identity, target_auth.target.name,
                                                   target_auth.account.login, now)
            if memo is not None:
                memo[key] = decision
        return isinstance(decision, Allow) and isinstance(decide_channel(decision.authorization, channel.action, now),
                                                          AllowChannel)

    async def recheck_datasets_login(self, identity: Identity) -> bool:
        """Does a live session on the `datasets` login still hold: the user there and active, and a device
        if the device policy now requires one (as the login itself demands)? What it may fetch is decided
        afresh for every file it opens, and an open download re-checks its own grant."""
        async with self._sessionmaker() as db:
            user = await db.get(User, identity.user_id)
        if user is None or user.status != "active" or user.name != identity.name:
            return False
        return identity.device_id is not None or await self.device_policy(identity) != "required"


# --- datasets ---------------------------------------------------------------------------------------------

DATASET_MODES = ("view", "download", "download-with-approval")


@dataclass(frozen=True)
class DatasetRef:
    id: int
    name: str
    classification: str
    version: int


@dataclass(frozen=True)
class DatasetAuthorization:
    """Permission for one identity to view (rendered, masked, watermarked) or download one dataset now."""

    identity: Identity
    dataset: DatasetRef
    action: str                 # view | download
    grant_id: int
    mask: str                   # none | pii
    watermark: bool
    request_id: int | None      # the approved download request this download uses up, if any
    decided_at: dt.datetime
    copy_id: int | None = None  # an open download copy this download may join instead of counting a new one
    _mint: object = field(init=False, repr=False, compare=False, default=None)

    @property
    def minted(self) -> bool:
        return self._mint is _MINT


@dataclass(frozen=True)
class AllowDataset:
    authorization: DatasetAuthorization


@dataclass(frozen=True)
class DatasetGrantFacts:
    id: int
    mode: str
    valid_until: dt.datetime | None
    max_downloads: int | None
    downloads: int
    min_level: int | None
    mask: str
    watermark: bool
    revoked: bool
    approved_request: int | None = None  # an approved, unexpired, unused download request under this grant
    # A download already counted under this grant for this user: the current version, unexpired, with files
    # of it not yet served. Its remaining files are part of that download, whatever the quota or approval says now.
    open_copy: int | None = None


@dataclass(frozen=True)
class DatasetFacts:
    user_active: bool
    dataset: DatasetRef | None
    published: bool
    publish_from: dt.datetime | None
    publish_until: dt.datetime | None
    classification_level: int
    grants: Sequence[DatasetGrantFacts] = ()
    rows_today: int = 0
    bytes_today: int = 0
    rows_per_day: int = 0
    bytes_per_day: int = 0


def _visible(facts: DatasetFacts, now: dt.datetime) -> bool:
    if facts.dataset is None or not facts.published:
        return False
    if facts.publish_from is not None and now < facts.publish_from:
        return False
    return facts.publish_until is None or now < facts.publish_until


def _current_dataset_grants(facts: DatasetFacts, now: dt.datetime) -> list[DatasetGrantFacts]:
    return [g for g in facts.grants
            if not g.revoked and (g.valid_until is None or now < g.valid_until) and g.mode in DATASET_MODES]


@dataclass(frozen=True)
class GrantedDataset:
    """One line of a user's dataset list: what it is and what the policy says about viewing and downloading."""

    name: str
    classification: str
    description: str
    version: int
    view: "AllowDataset | StepUp | Deny"
    download: "AllowDataset | StepUp | Deny"
    download_mode: str | None   # download | download-with-approval | None (view only)


def decide_dataset(identity: Identity, facts: DatasetFacts, action: str, now: dt.datetime) -> AllowDataset | StepUp | Deny:
    """Pure decision. Every "no" looks the same to the user (the reason is for the audit log)."""
    if action not in ("view", "download"):
        return Deny("unknown action")
    if not facts.user_active:
        return Deny("user disabled")
    if not _visible(facts, now):
        return Deny("not published" if facts.dataset is not None else "no such dataset")
    current = _current_dataset_grants(facts, now)
    if action == "download":
        left = [g for g in current
                if g.max_downloads is None or g.downloads < g.max_downloads or g.open_copy is not None]
        usable = [g for g in left if g.mode == "download" or (
            g.mode == "download-with-approval" and (g.approved_request is not None or g.open_copy is not None))]
        if not usable and current:
            return Deny("no usable download grant (quota used, or approval needed)")
        if facts.bytes_per_day and facts.bytes_today >= facts.bytes_per_day:
            return Deny("daily download limit reached")
    else:
        # A download grant also lets one look; an approval-gated one only once approved (else its unmasked
        # pages would hand out, row by row, what the approval guards, and outrank a masked view grant).
        usable = [g for g in current if g.mode != "download-with-approval" or g.approved_request is not None]
        if facts.rows_per_day and facts.rows_today >= facts.rows_per_day:
            return Deny("daily view limit reached")
    if not usable:
        return Deny("no current grant")
    # Highest demand wins: the classification's level and the grant's; use the easiest grant that qualifies.
    demands = [(max(facts.classification_level, g.min_level or 1), g) for g in usable]
    reachable = [(level, g) for level, g in demands if identity.level >= level]
    if not reachable:
        return StepUp(min(level for level, _ in demands))
    # Of the grants the identity qualifies for, the least masked one decides how the data is shown; a
    # download joins one already counted before it counts another, and uses a plain download grant before
    # it spends a one-time approval.
    level, grant = min(reachable, key=lambda item: (item[1].mask != "none",
                                                     action == "download" and item[1].open_copy is None,
                                                     action == "download" and item[1].mode != "download",
                                                     item[1].watermark, item[1].id))
    return AllowDataset(_minted(DatasetAuthorization(
        identity=identity, dataset=facts.dataset, action=action, grant_id=grant.id, mask=grant.mask,
        watermark=grant.watermark, request_id=grant.approved_request if grant.mode == "download-with-approval" else None,
        decided_at=now, copy_id=grant.open_copy if action == "download" else None)))

