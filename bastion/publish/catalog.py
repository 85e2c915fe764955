"""The dataset catalog: add and version files, publish windows, grants, download approvals; all audited."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import DatasetChange, DownloadDecided, DownloadRequested
from bastion.audit.log import AuditLog
from bastion.clock import Clock
from bastion.errors import Conflict, NotFound, UsageError
from bastion.policy import DATASET_MODES
from bastion.publish import render
from bastion.publish.blobs import DEFAULT_CHUNK, BlobStore, Staged, blob_dir, in_thread
from bastion.publish.errors import NO_SUCH_DATASET, InputError, RenderError
from bastion.publish.masking import PROFILES
from bastion.publish.paths import check_relpath, shown
from bastion.store.models import Dataset, DatasetFile, DatasetGrant, DownloadRequest, User
from bastion.vault import Vault

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
GROUP_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
CLASSIFICATIONS = ("public", "internal", "confidential", "secret")
MAX_FILES = 10_000
MAX_DESCRIPTION = 4000
MAX_REASON = 512


def check_dataset_name(name: Any) -> str:
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        shown_name = repr(name[:40]) if isinstance(name, str) else "?"
        raise UsageError(f"invalid dataset name {shown_name}: use letters, digits, '.', '_' or '-' (at most 63)")
    return name


def parse_time(value: str | dt.datetime | None, what: str) -> dt.datetime | None:
    """ISO 8601 (a time without a zone is UTC) or an aware datetime; UsageError naming the option otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise UsageError(f"{what}: not an ISO 8601 time: {str(value)[:40]!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _text(value: Any, what: str, limit: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be text")
    value = value.strip()
    if required and not value:
        raise UsageError(f"{what} is required")
    if len(value) > limit:
        raise UsageError(f"{what} is longer than {limit} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise UsageError(f"{what} must not contain control characters")
    return value


def dataset_state(dataset: Dataset, now: dt.datetime) -> str:
    if not dataset.published:
        return "unpublished"
    if dataset.publish_from is not None and now < dataset.publish_from:
        return "scheduled"
    if dataset.publish_until is not None and now >= dataset.publish_until:
        return "expired"
    return "published"


def grant_state(grant: DatasetGrant, now: dt.datetime) -> str:
    if grant.revoked_at is not None:
        return "revoked"
    if grant.valid_until is not None and now >= grant.valid_until:
        return "expired"
    if grant.max_downloads is not None and grant.downloads >= grant.max_downloads:
        return "used-up"
    return "active"


def request_state(request: DownloadRequest, now: dt.datetime) -> str:
    if request.status == "approved" and request.expires_at is not None and now >= request.expires_at:
        return "expired"
    return request.status


# --- where files come from -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSource:
    """One file to store: its path inside the dataset, what to read, and its size when known."""

    path: str
    source: Any   # a local path, or a stream (see blobs.BlobStore.stage)
    size: int | None


def _regular_size(path: str) -> int:
    return os.stat(path).st_size


def collect_files(path: str | os.PathLike, max_bytes: int) -> list[FileSource]:
    """A file, or every file under a folder; links may point only at files inside that folder."""
    given = Path(path)
    try:
        info = os.stat(given)
    except FileNotFoundError:
        raise InputError(f"no such file or folder: {shown(str(path))}") from None
    except OSError as exc:
        raise InputError(f"cannot read {shown(str(path))}: {exc.strerror}") from None
    if stat.S_ISREG(info.st_mode):
        sources = [_file_source(given.name, str(given.resolve()), info.st_size, max_bytes)]
    elif stat.S_ISDIR(info.st_mode):
        sources = _folder_sources(given.resolve(), max_bytes)
    else:
        raise InputError(f"{shown(str(path))} is not a regular file or a folder")
    return sources


def _file_source(rel: str, real: str, size: int, max_bytes: int) -> FileSource:
    try:
        check_relpath(rel)
    except ValueError as exc:
        raise InputError(f"unusable file name {shown(rel)}: {exc}") from None
    if size == 0:
        raise InputError(f"{shown(rel)} is empty (0 bytes): there is nothing to publish")
    if size > max_bytes:
        raise InputError(f"{shown(rel)} is larger than publish.max_file_bytes ({max_bytes} bytes)")
    return FileSource(rel, real, size)


def _folder_sources(root: Path, max_bytes: int) -> list[FileSource]:
    sources: list[FileSource] = []
    prefix = str(root) + os.sep

    def refuse(exc: OSError) -> None:
        raise InputError(f"cannot read a folder under {shown(str(root))}: {exc.strerror}")

    for folder, dirs, files in os.walk(root, followlinks=False, onerror=refuse):
        dirs.sort()
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                raise InputError(f"{shown(rel)} is a link to a folder; links are not followed into folders")
        for name in sorted(files):
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                real = os.path.realpath(full)
                if not real.startswith(prefix):
                    raise InputError(f"{shown(rel)} links outside the folder")
                if not os.path.isfile(real):
                    raise InputError(f"{shown(rel)} is a link to something that is not a file")
                full = real
            elif not stat.S_ISREG(mode):
                raise InputError(f"{shown(rel)} is not a regular file")
            sources.append(_file_source(rel, full, _regular_size(full), max_bytes))
            if len(sources) > MAX_FILES:
                raise InputError(f"the folder holds more than {MAX_FILES} files")
    if not sources:
        raise InputError(f"the folder {shown(str(root))} holds no files")
    return sources


# --- the catalog -----------------------------------------------------------------------------------------


@dataclass
class Catalog:
    """Dataset administration as `actor` (the CLI's local admin, or a console user)."""

    sessionmaker: async_sessionmaker
    vault: Vault
    audit: AuditLog
    clock: Clock
    actor: str = "cli"
    source: str = "local"
    config: Any = field(default=None, kw_only=True)
    chunk_size: int = field(default=DEFAULT_CHUNK, kw_only=True)

    def __post_init__(self) -> None:
        if self.config is None:
            raise TypeError("Catalog needs config=")

    @classmethod
    def from_services(cls, services: Any, actor: str = "cli", source: str = "local") -> "Catalog":
        return cls(services.db, services.vault, services.audit, services.clock, actor, source,
                   config=services.config)

    @property
    def blobs(self) -> BlobStore:
        return BlobStore(blob_dir(self.config), self.sessionmaker, self.vault, self.clock,
                         self.config["publish.max_file_bytes"], self.chunk_size)

    async def _audit(self, action: str, obj: str, before: dict[str, Any] | None,
                     after: dict[str, Any] | None) -> None:
        await self.audit.emit(DatasetChange(actor=self.actor, source=self.source, target=obj,
                                            action=f"dataset.{action}", object=obj, before=before, after=after))

    async def _dataset(self, db: Any, name: str) -> Dataset:
        dataset = (await db.execute(select(Dataset).where(Dataset.name == name[:64]))).scalar_one_or_none()
        if dataset is None:
            raise NotFound(f"no such dataset: {name[:64]}")
        return dataset

    async def _user(self, db: Any, name: str) -> User:
        # The exact name: a longer one must not match the user its first 64 characters name.
        user = (await db.execute(select(User).where(User.name == str(name)))).scalar_one_or_none() \
            if len(str(name)) <= 64 else None
        if user is None:
            raise NotFound(f"no such user: {str(name)[:64]}")
        return user

    # files and versions -----------------------------------------------------------------------------------

    async def _stage(self, sources: Iterable[FileSource]) -> list[tuple[FileSource, Staged]]:
        """Encrypt every file into the staging area and check it; on any failure nothing is left behind."""
        store = self.blobs
        staged: list[tuple[FileSource, Staged]] = []
        try:
            for item in sources:
                try:
                    blob = await store.stage(item.source, expected_size=item.size)
                except InputError as exc:
                    raise InputError(f"{shown(item.path)}: {exc.safe_message}") from None
                staged.append((item, blob))
                if blob.size == 0:
                    raise InputError(f"{shown(item.path)} is empty (0 bytes): there is nothing to publish")
                media_type = render.media_type_for(item.path)
                if render.view_kind(media_type) == render.TABLE:
                    await in_thread(self._validate_table, item.path, blob, media_type)
        except BaseException:
            for _, blob in staged:
                blob.discard()
            raise
        return staged

    @staticmethod
    def _validate_table(path: str, blob: Staged, media_type: str) -> None:
        reader = blob.reader()
        try:
            render.validate_table(reader, tsv=media_type == "text/tab-separated-values")
        except RenderError as exc:
            raise InputError(f"{shown(path)}: {exc.safe_message}") from None
        finally:
            reader.close()

    async def _store_version(self, name: str, sources: list[FileSource], *, create: dict[str, Any] | None,
                             owner: str | None = None) -> dict[str, Any]:
        """Stage, then in one transaction: the dataset row (when new), blob rows and files, the version."""
        staged = await self._stage(sources)
        store = self.blobs
        try:
            async with self.sessionmaker() as db:
                try:
                    async with db.begin():
                        if create is not None:
                            owner_id = (await self._user(db, owner)).id if owner else None
                            dataset = Dataset(name=name, owner_id=owner_id, published=False, current_version=0,
                                              created_at=self.clock.now(), **create)
                            db.add(dataset)
                            await db.flush()
                        else:
                            dataset = await self._dataset(db, name)
                        version = dataset.current_version + 1
                        async with store.placing(db) as placer:
                            for item, blob in staged:
                                await placer.place(blob)
                                db.add(DatasetFile(dataset_id=dataset.id, version=version, path=item.path,
                                                   size=blob.size, sha256=blob.sha256,
                                                   media_type=render.media_type_for(item.path),
                                                   created_by=self.actor, created_at=self.clock.now()))
                            dataset.current_version = version
                            await db.flush()
                except IntegrityError:
                    if create is not None:
                        raise Conflict(f"dataset {name} already exists") from None
                    raise Conflict(f"dataset {name} was changed at the same time; try again") from None
        finally:
            for _, blob in staged:
                blob.discard()  # placed ones were renamed away; this removes the rest
        return {"name": name, "version": version,
                "files": [{"path": item.path, "size": blob.size, "sha256": blob.sha256} for item, blob in staged]}

    async def _check_new(self, name: str, owner: str | None) -> None:
        """Cheap checks before any file is read (the transaction checks again)."""
        async with self.sessionmaker() as db:
            exists = (await db.execute(select(Dataset.id).where(Dataset.name == name))).first()
            if owner is not None:
                await self._user(db, owner)
        if exists is not None:
            raise Conflict(f"dataset {name} already exists")

    def _create_fields(self, classification: str, description: str | None) -> dict[str, Any]:
        if classification not in CLASSIFICATIONS:
            raise UsageError(f"classification must be one of {', '.join(CLASSIFICATIONS)}")
        return {"classification": classification, "description": _text(description, "description", MAX_DESCRIPTION)}

    async def add(self, name: str, path: str | os.PathLike, classification: str = "internal",
                  description: str | None = None, owner: str | None = None) -> dict[str, Any]:
        """A new dataset (unpublished) from a file or a folder: version 1."""
        check_dataset_name(name)
        fields = self._create_fields(classification, description)
        await self._check_new(name, owner)
        sources = await in_thread(collect_files, path, self.config["publish.max_file_bytes"])
        result = await self._store_version(name, sources, create=fields, owner=owner)
        after = {**fields, "owner": owner, "version": 1, "files": result["files"]}
        await self._audit("add", name, None, after)
        return {**result, **fields, "owner": owner}

    async def add_upload(self, name: str, filename: str, stream: Any, *, size: int | None = None,
                         classification: str = "internal", description: str | None = None,
                         owner: str | None = None) -> dict[str, Any]:
        """A new dataset from one uploaded file, streamed (console); `size` is the declared length, if any."""
        check_dataset_name(name)
        fields = self._create_fields(classification, description)
        item = self._upload_source(filename, stream, size)
        await self._check_new(name, owner)
        result = await self._store_version(name, [item], create=fields, owner=owner)
        await self._audit("add", name, None, {**fields, "owner": owner, "version": 1, "files": result["files"]})
        return {**result, **fields, "owner": owner}

    def _upload_source(self, filename: str, stream: Any, size: int | None) -> FileSource:
        try:
            check_relpath(filename)
        except ValueError as exc:
            raise InputError(f"unusable file name: {exc}") from None
        if "/" in filename:
            raise InputError("an uploaded file name must not contain '/'")
        if size is not None and size > self.config["publish.max_file_bytes"]:
            raise InputError(f"the file is larger than publish.max_file_bytes "
                             f"({self.config['publish.max_file_bytes']} bytes)")
        return FileSource(filename, stream, size)

    async def _update(self, name: str, sources: list[FileSource]) -> dict[str, Any]:
        async with self.sessionmaker() as db:
            before = (await self._dataset(db, name)).current_version
        result = await self._store_version(name, sources, create=None)
        await self._audit("update", name, {"version": before},
                          {"version": result["version"], "files": result["files"]})
        return result

    async def update(self, name: str, path: str | os.PathLike) -> dict[str, Any]:
        """A new version of a dataset from a file or folder; the previous versions stay stored."""
        check_dataset_name(name)
        async with self.sessionmaker() as db:
            await self._dataset(db, name)
        sources = await in_thread(collect_files, path, self.config["publish.max_file_bytes"])
        return await self._update(name, sources)

    async def update_upload(self, name: str, filename: str, stream: Any, *, size: int | None = None) -> dict[str, Any]:
        check_dataset_name(name)
        item = self._upload_source(filename, stream, size)
        async with self.sessionmaker() as db:
            await self._dataset(db, name)
        return await self._update(name, [item])

    # publishing ---------------------------------------------------------------------------------------------

    async def publish(self, name: str, from_: str | dt.datetime | None = None,
                      until: str | dt.datetime | None = None) -> dict[str, Any]:
        """Make a dataset visible to its grantees, optionally only from `from_` and until `until`."""
        check_dataset_name(name)
        start, end = parse_time(from_, "--from"), parse_time(until, "--until")
        now = self.clock.now()
        if end is not None and end <= now:
            raise UsageError("--until lies in the past")
        if start is not None and end is not None and start >= end:
            raise UsageError("--from must be before --until")
        async with self.sessionmaker() as db, db.begin():
            dataset = await self._dataset(db, name)
            before = {"published": dataset.published, "from": _iso(dataset.publish_from),
                      "until": _iso(dataset.publish_until)}
            dataset.published, dataset.publish_from, dataset.publish_until = True, start, end
        after = {"published": True, "from": _iso(start), "until": _iso(end)}
        await self._audit("publish", name, before, after)
        return {"name": name, **after}

    async def unpublish(self, name: str) -> None:
        check_dataset_name(name)
        async with self.sessionmaker() as db, db.begin():
            dataset = await self._dataset(db, name)
            if not dataset.published:
                raise Conflict(f"dataset {name} is not published")
            before = {"published": True, "from": _iso(dataset.publish_from), "until": _iso(dataset.publish_until)}
            dataset.published, dataset.publish_from, dataset.publish_until = False, None, None
        await self._audit("unpublish", name, before, {"published": False, "from": None, "until": None})

    # reading ------------------------------------------------------------------------------------------------

    async def list(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        async with self.sessionmaker() as db:
            datasets = (await db.execute(select(Dataset).order_by(Dataset.name))).scalars().all()
            owners = dict((await db.execute(select(User.id, User.name))).all())
            totals = {(d, v): (n, s) for d, v, n, s in (await db.execute(
                select(DatasetFile.dataset_id, DatasetFile.version, func.count(), func.sum(DatasetFile.size))
                .group_by(DatasetFile.dataset_id, DatasetFile.version))).all()}
            grants = dict((await db.execute(select(DatasetGrant.dataset_id, func.count())
                                            .where(DatasetGrant.revoked_at.is_(None))
                                            .group_by(DatasetGrant.dataset_id))).all())
        rows = []
        for d in datasets:
            files, size = totals.get((d.id, d.current_version), (0, 0))
            rows.append({"name": d.name, "classification": d.classification, "state": dataset_state(d, now),
                         "version": d.current_version, "files": files, "size": int(size or 0),
                         "owner": owners.get(d.owner_id), "grants": grants.get(d.id, 0),
                         "from": _iso(d.publish_from), "until": _iso(d.publish_until),
                         "description": d.description})
        return rows

    async def show(self, name: str) -> dict[str, Any]:
        check_dataset_name(name)
        now = self.clock.now()
        async with self.sessionmaker() as db:
            d = await self._dataset(db, name)
            owner = await db.get(User, d.owner_id) if d.owner_id else None
            files = (await db.execute(select(DatasetFile).where(DatasetFile.dataset_id == d.id)
                                      .order_by(DatasetFile.version, DatasetFile.path))).scalars().all()
            grants = (await db.execute(select(DatasetGrant).where(DatasetGrant.dataset_id == d.id)
                                       .order_by(DatasetGrant.id))).scalars().all()
        versions: dict[int, dict[str, Any]] = {}
        for f in files:
            v = versions.setdefault(f.version, {"version": f.version, "files": 0, "size": 0,
                                                "created_at": f.created_at.isoformat(), "created_by": f.created_by})
            v["files"] += 1
            v["size"] += f.size
        return {"name": d.name, "classification": d.classification, "description": d.description,
                "owner": owner.name if owner else None, "state": dataset_state(d, now), "published": d.published,
                "from": _iso(d.publish_from), "until": _iso(d.publish_until), "version": d.current_version,
                "created_at": d.created_at.isoformat(),
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "media_type": f.media_type,
                           "viewer": render.view_kind(f.media_type)}
                          for f in files if f.version == d.current_version],
                "versions": [versions[v] for v in sorted(versions)],
                "grants": [grant_view(g, now) for g in grants]}

    # grants -------------------------------------------------------------------------------------------------

    async def grant(self, name: str, *, user: str | None = None, group: str | None = None, mode: str = "view",
                    until: str | dt.datetime | None = None, max_downloads: int | None = None,
                    min_level: int | None = None, mask: str = "none", watermark: bool = True) -> dict[str, Any]:
        check_dataset_name(name)
        if (user is None) == (group is None):
            raise UsageError("give exactly one of --user or --group")
        if mode not in DATASET_MODES:
            raise UsageError(f"mode must be one of {', '.join(DATASET_MODES)}")
        if mask not in PROFILES:
            raise UsageError(f"mask must be one of {', '.join(PROFILES)}")
        if mask != "none" and mode != "view":
            raise UsageError("a masked grant can only view: masking applies to rendered views, a download is "
                             "the raw file")
        if max_downloads is not None:
            if mode == "view":
                raise UsageError("--max-downloads needs a download mode")
            if isinstance(max_downloads, bool) or not isinstance(max_downloads, int) or max_downloads < 1:
                raise UsageError("--max-downloads must be a positive number")
        if min_level is not None and min_level not in (1, 2, 3):
            raise UsageError("min level must be 1, 2 or 3")
        end = parse_time(until, "--until")
        now = self.clock.now()
        if end is not None and end <= now:
            raise UsageError("--until lies in the past")
        if group is not None and not (isinstance(group, str) and GROUP_NAME.fullmatch(group)):
            raise UsageError("invalid group name")
        async with self.sessionmaker() as db, db.begin():
            dataset = await self._dataset(db, name)
            if user is not None:
                await self._user(db, user)
            row = DatasetGrant(dataset_id=dataset.id, subject_kind="user" if user else "group",
                               subject=user or group, mode=mode, valid_until=end, max_downloads=max_downloads,
                               downloads=0, min_level=min_level, mask=mask, watermark=bool(watermark),
                               created_by=self.actor, created_at=now)
            db.add(row)
            await db.flush()
            grant_id = row.id
        after = {"id": grant_id, "dataset": name, "subject": f"{'user' if user else 'group'}:{user or group}",
                 "mode": mode, "until": _iso(end), "max_downloads": max_downloads, "min_level": min_level,
                 "mask": mask, "watermark": bool(watermark)}
        await self._audit("grant", f"dataset-grant:{grant_id}", None, after)
        return after

    async def revoke(self, grant_id: int) -> None:
        if isinstance(grant_id, bool) or not isinstance(grant_id, int):
            raise UsageError("a dataset grant id is a number")
        async with self.sessionmaker() as db, db.begin():
            grant = await db.get(DatasetGrant, grant_id)
            if grant is None:
                raise NotFound(f"no such dataset grant: {grant_id}")
            if grant.revoked_at is not None:
                raise Conflict(f"dataset grant {grant_id} is already revoked")
            now = self.clock.now()
            before = {"state": grant_state(grant, now)}
            grant.revoked_at = now
        await self._audit("revoke", f"dataset-grant:{grant_id}", before, {"state": "revoked"})

    # download approvals -------------------------------------------------------------------------------------

    async def request_download(self, user: str, name: str) -> dict[str, Any]:
        """`user` asks to download `name` under a download-with-approval grant (one open request at a time)."""
        now = self.clock.now()
        async with self.sessionmaker() as db, db.begin():
            requester = (await db.execute(select(User).where(User.name == str(user)[:64]))).scalar_one_or_none()
            dataset = (await db.execute(select(Dataset).where(Dataset.name == str(name)[:64]))).scalar_one_or_none()
            if requester is None or requester.status != "active" or dataset is None \
                    or dataset_state(dataset, now) != "published":
                raise NotFound(NO_SUCH_DATASET)  # the same answer as for anything the user may not see
            subjects = or_((DatasetGrant.subject_kind == "user") & (DatasetGrant.subject == requester.name),
                           (DatasetGrant.subject_kind == "group")
                           & (DatasetGrant.subject.in_(list(requester.groups or []))))
            grants = [g for g in (await db.execute(select(DatasetGrant).where(
                DatasetGrant.dataset_id == dataset.id, DatasetGrant.mode == "download-with-approval", subjects)
                .order_by(DatasetGrant.id))).scalars() if grant_state(g, now) == "active"]
            if not grants:
                raise NotFound(NO_SUCH_DATASET)
            open_requests = [r for r in (await db.execute(select(DownloadRequest).where(
                DownloadRequest.user_id == requester.id,
                DownloadRequest.grant_id.in_([g.id for g in grants])))).scalars()
                if request_state(r, now) in ("requested", "approved")]
            if open_requests:
                existing = open_requests[0]
                return {"id": existing.id, "dataset": dataset.name, "status": request_state(existing, now),
                        "expires_at": _iso(existing.expires_at), "new": False}
            request = DownloadRequest(grant_id=grants[0].id, user_id=requester.id, status="requested",
                                      requested_at=now)
            db.add(request)
            await db.flush()
            request_id, grant_id = request.id, grants[0].id
        await self.audit.emit(DownloadRequested(actor=requester.name, source=self.source, target=dataset.name,
                                                request_id=request_id, grant_id=grant_id))
        return {"id": request_id, "dataset": dataset.name, "status": "requested", "expires_at": None, "new": True}

    async def decide(self, request_id: int, approve: bool, reason: str, decider: str | None = None) -> dict[str, Any]:
        """Approve (a one-time download for publish.approval_minutes) or refuse a request, with a reason.

        `decider` is a console user, who must be an admin or the dataset's owner (and not the requester);
        None means this catalog's actor (the local CLI administrator).
        """
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            raise UsageError("a download request id is a number")
        if not isinstance(approve, bool):
            raise UsageError("approve must be true or false")
        reason = _text(reason, "reason", MAX_REASON, required=True)
        now = self.clock.now()
        async with self.sessionmaker() as db, db.begin():
            request = await db.get(DownloadRequest, request_id)
            grant = await db.get(DatasetGrant, request.grant_id) if request is not None else None
            dataset = await db.get(Dataset, grant.dataset_id) if grant is not None else None
            if request is None or dataset is None:
                raise NotFound(f"no such download request: {request_id}")
            decided_by = self.actor
            if decider is not None:
                person = (await db.execute(select(User).where(User.name == str(decider)[:64]))).scalar_one_or_none()
                if person is None or person.status != "active" \
                        or ("admin" not in (person.roles or []) and dataset.owner_id != person.id):
                    raise NotFound(f"no such download request: {request_id}")
                if person.id == request.user_id:
                    raise UsageError("a request cannot be decided by the user who made it")
                decided_by = person.name
            if request.status != "requested":
                raise Conflict(f"download request {request_id} was already {request.status}")
            requester = await db.get(User, request.user_id)
            request.status = "approved" if approve else "refused"
            request.reason, request.decided_by, request.decided_at = reason, decided_by, now
            request.expires_at = now + dt.timedelta(minutes=self.config["publish.approval_minutes"]) if approve \
                else None
            expires_at = request.expires_at
        result = {"id": request_id, "dataset": dataset.name, "user": requester.name if requester else None,
                  "status": "approved" if approve else "refused", "reason": reason, "decided_by": decided_by,
                  "expires_at": _iso(expires_at)}
        await self.audit.emit(DownloadDecided(actor=decided_by, source=self.source, target=dataset.name,
                                              request_id=request_id, user=result["user"] or "",
                                              decision=result["status"], reason=reason,
                                              expires_at=_iso(expires_at)))
        return result

    async def requests(self, decider: str | None = None, pending_only: bool = False) -> list[dict[str, Any]]:
        """Download requests, newest first; for a console `decider`, only those they may decide."""
        now = self.clock.now()
        async with self.sessionmaker() as db:
            query = (select(DownloadRequest, DatasetGrant, Dataset, User)
                     .join(DatasetGrant, DownloadRequest.grant_id == DatasetGrant.id)
                     .join(Dataset, DatasetGrant.dataset_id == Dataset.id)
                     .join(User, DownloadRequest.user_id == User.id)
                     .order_by(DownloadRequest.id.desc()).limit(1000))
            if pending_only:
                query = query.where(DownloadRequest.status == "requested")
            if decider is not None:
                person = (await db.execute(select(User).where(User.name == str(decider)[:64]))).scalar_one_or_none()
                if person is None or person.status != "active":
                    return []
                if "admin" not in (person.roles or []):
                    query = query.where(Dataset.owner_id == person.id)
            rows = (await db.execute(query)).all()
        return [{"id": r.id, "dataset": d.name, "user": u.name, "grant_id": g.id, "status": request_state(r, now),
                 "requested_at": r.requested_at.isoformat(), "decided_by": r.decided_by or None,
                 "decided_at": _iso(r.decided_at), "expires_at": _iso(r.expires_at), "reason": r.reason or None}
                for r, g, d, u in rows]


def grant_view(g: DatasetGrant, now: dt.datetime) -> dict[str, Any]:
    return {"id": g.id, "subject": f"{g.subject_kind}:{g.subject}", "mode": g.mode, "state": grant_state(g, now),
            "until": _iso(g.valid_until), "max_downloads": g.max_downloads, "downloads": g.downloads,
            "min_level": g.min_level, "mask": g.mask, "watermark": g.watermark}
