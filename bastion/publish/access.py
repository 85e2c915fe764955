"""The serving boundary: every front-end lists, views and downloads dataset files only through here.

Each call needs a `DatasetAuthorization` minted by the policy moments ago, re-checks what may have changed
since (revocation, expiry, publication, a new version), accounts the user's daily usage atomically, and
writes the audit event before the first byte leaves. Every refusal is `Refused`, which front-ends must
answer exactly like a dataset that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any, AsyncIterator, Awaitable, Callable

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bastion.audit.events import DatasetDownload, DatasetDownloadStopped, DatasetView, QuotaExceeded
from bastion.errors import UsageError
from bastion.policy import DatasetAuthorization, require_minted
from bastion.publish import copies, render
from bastion.publish.blobs import BlobReader, BlobStore, in_thread
from bastion.publish.errors import BlobError, Refused, RenderError
from bastion.publish.paths import check_relpath
from bastion.store.models import DailyUsage, Dataset, DatasetFile, DatasetGrant, DownloadRequest, User

# An authorization is a decision made now, not a ticket: front-ends ask the policy right before each call.
MAX_AUTHORIZATION_AGE = dt.timedelta(seconds=120)
MAX_PAGE = 10_000_000
MAX_RANGE_READ = 1 << 20
_NO_VIEWER = "there is no viewer for this type of file"
_NO_MASKED_IMAGES = "images cannot be masked, so they are not shown under a masking grant"


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    media_type: str
    viewer: str  # table | text | image | none


@dataclass(frozen=True)
class ViewResult:
    """One rendered page: data for a template to escape (never markup), the watermark, and the view id."""

    dataset: str
    version: int
    path: str
    media_type: str
    kind: str                                   # table | text | image | none
    page: int
    per_page: int
    has_next: bool = False
    header: tuple[str, ...] = ()                # table
    rows: tuple[tuple[str, ...], ...] = ()      # table
    masked_columns: tuple[int, ...] = ()        # table: columns masked whole
    lines: tuple[str, ...] = ()                 # text
    image: bytes | None = None                  # image: re-encoded, watermark burned in, no metadata
    image_type: str = ""
    width: int = 0
    height: int = 0
    encoding: str = ""
    rows_viewed: int = 0                        # what this view counted against the daily limit
    mask: str = "none"
    view_id: str = ""
    watermark_text: str = ""                    # empty when the grant has --no-watermark
    watermark_png: bytes | None = None          # a tile for the page background (table and text views)
    notice: str = ""                            # for the user: no viewer, page shortened by the daily limit


class _OverQuota(Exception):
    def __init__(self, kind: str, limit: int, requested: int):
        super().__init__(kind)
        self.kind, self.limit, self.requested = kind, limit, requested


def _check(authorization: DatasetAuthorization, action: str, now: dt.datetime) -> None:
    require_minted(authorization)
    if authorization.action != action:
        raise PermissionError(f"this authorization is for {authorization.action}, not {action}")
    age = now - authorization.decided_at
    if age > MAX_AUTHORIZATION_AGE or age < -MAX_AUTHORIZATION_AGE:
        raise Refused("authorization is stale: ask the policy again")


def _path(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return check_relpath(path)
    except ValueError:
        raise Refused("malformed path") from None


async def _current(db: AsyncSession, authorization: DatasetAuthorization, now: dt.datetime,
                   same_version: bool = True) -> tuple[Dataset, User]:
    """What the policy saw must still hold: published, granted to this user, same version, user active.

    An open download checks all but the version: a new version does not cut off a download of the old.
    """
    ref, identity = authorization.dataset, authorization.identity
    dataset = await db.get(Dataset, ref.id)
    if dataset is None or dataset.name != ref.name:
        raise Refused("dataset removed")
    if not dataset.published or (dataset.publish_from is not None and now < dataset.publish_from) \
            or (dataset.publish_until is not None and now >= dataset.publish_until):
        raise Refused("dataset not published")
    if same_version and dataset.current_version != ref.version:
        raise Refused("a newer version was published since the decision")
    grant = await db.get(DatasetGrant, authorization.grant_id)
    if grant is None or grant.dataset_id != dataset.id or grant.revoked_at is not None \
            or (grant.valid_until is not None and now >= grant.valid_until):
        raise Refused("grant revoked or expired")
    user = await db.get(User, identity.user_id)
    if user is None or user.status != "active" or not (
            (grant.subject_kind == "user" and grant.subject == user.name)
            or (grant.subject_kind == "group" and grant.subject in (user.groups or []))):
        raise Refused("user disabled or no longer covered by the grant")
    return dataset, user


async def _approval_still_open(db: AsyncSession, authorization: DatasetAuthorization, user: User,
                               now: dt.datetime) -> None:
    """A view under an approval-gated grant holds only while its approval is unused and unexpired."""
    grant = await db.get(DatasetGrant, authorization.grant_id)
    if grant is None or grant.mode != "download-with-approval":
        return
    request = await db.get(DownloadRequest, authorization.request_id) if authorization.request_id else None
    if request is None or request.grant_id != grant.id or request.user_id != user.id \
            or request.status != "approved" or (request.expires_at is not None and now >= request.expires_at):
        raise Refused("approval missing, expired or already used")


async def _file(db: AsyncSession, dataset: Dataset, path: str | None) -> DatasetFile:
    query = select(DatasetFile).where(DatasetFile.dataset_id == dataset.id,
                                      DatasetFile.version == dataset.current_version)
    if path is not None:
        query = query.where(DatasetFile.path == path)
    found = (await db.execute(query.limit(2))).scalars().all()
    if len(found) != 1:  # no such file, or no path given for a dataset of several files
        raise Refused("no such file")
    return found[0]


async def files(services: Any, authorization: DatasetAuthorization) -> list[FileInfo]:
    """The files of the dataset version this authorization covers (for a listing)."""
    now = services.clock.now()
    _check(authorization, authorization.action, now)
    async with services.db() as db:
        dataset, _ = await _current(db, authorization, now)
        rows = (await db.execute(select(DatasetFile).where(
            DatasetFile.dataset_id == dataset.id, DatasetFile.version == dataset.current_version)
            .order_by(DatasetFile.path))).scalars().all()
    return [FileInfo(f.path, f.size, f.media_type, render.view_kind(f.media_type)) for f in rows]


# --- daily usage -----------------------------------------------------------------------------------------


def _day(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")


async def _ensure_usage_row(db: AsyncSession, user_id: int, day: str) -> None:
    if db.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    await db.execute(insert(DailyUsage).values(user_id=user_id, day=day, rows_viewed=0, bytes_downloaded=0)
                     .on_conflict_do_nothing())


async def _charge(db: AsyncSession, user_id: int, day: str, column: str, amount: int, limit: int,
                  partial: bool) -> tuple[int, int]:
    """Add `amount` to today's counter unless the limit is already reached (all-or-nothing unless `partial`,
    which grants what is left). One conditional UPDATE, so concurrent requests cannot both slip past.
    Returns (granted, counter after)."""
    await _ensure_usage_row(db, user_id, day)
    counter = getattr(DailyUsage, column)
    where = [DailyUsage.user_id == user_id, DailyUsage.day == day]
    if limit:
        where.append(counter < limit if partial else counter + amount <= limit)
    after = (await db.execute(update(DailyUsage).where(*where).values({column: counter + amount})
                              .returning(counter).execution_options(synchronize_session=False))).scalar_one_or_none()
    if after is None:
        return 0, -1
    if limit and after > limit:
        await db.execute(update(DailyUsage).where(DailyUsage.user_id == user_id, DailyUsage.day == day)
                         .values({column: limit}).execution_options(synchronize_session=False))
        return amount - (after - limit), limit
    return amount, after


async def _usage(services: Any, user_id: int, day: str, column: str) -> int:
    async with services.db() as db:
        row = await db.get(DailyUsage, (user_id, day))
    return int(getattr(row, column)) if row is not None else 0


async def _alert(services: Any, authorization: DatasetAuthorization, kind: str, limit: int, used: int,
                 requested: int, day: str, outcome: str) -> None:
    identity = authorization.identity
    await services.audit.emit(QuotaExceeded(actor=identity.name, source=identity.source_addr,
                                            target=authorization.dataset.name, outcome=outcome, limit_kind=kind,
                                            limit=limit, used=used, requested=requested, day=day))


# --- view ------------------------------------------------------------------------------------------------

# Rendering decrypts and parses in a thread and may scan far into a big file: at most this many at once
# over the whole gateway, and one at a time per user, so no one can starve the others (SSH included).
MAX_RENDERS = 2
RENDER_WAIT = 30.0
_renders: asyncio.Semaphore | None = None
_rendering_users: set[int] = set()


@contextlib.asynccontextmanager
async def _render_slot(user_id: int) -> AsyncIterator[None]:
    global _renders
    if user_id in _rendering_users:
        raise UsageError("another view of yours is still being prepared; try again when it is shown")
    if _renders is None:
        _renders = asyncio.Semaphore(MAX_RENDERS)
    _rendering_users.add(user_id)
    try:
        try:
            async with asyncio.timeout(RENDER_WAIT):
                await _renders.acquire()
        except TimeoutError:
            raise UsageError("the viewer is busy; try again in a moment") from None
        try:
            yield
        finally:
            _renders.release()
    finally:
        _rendering_users.discard(user_id)



def _render(kind: str, reader: BlobReader, media_type: str, page: int, per_page: int, mask: str,
            mark: str) -> dict[str, Any]:
    """Blocking: one page of one file as ViewResult fields (run in a thread)."""
    if kind == render.TABLE:
        table = render.table_page(reader, tsv=media_type == "text/tab-separated-values", page=page,
                                  per_page=per_page, mask=mask)
        return {"header": table.header, "rows": table.rows, "has_next": table.has_next,
                "masked_columns": table.masked_columns, "encoding": table.encoding}
    if kind == render.TEXT:
        text = render.text_page(reader, size=reader.size, page=page, per_page=per_page, mask=mask,
                                json_pretty=media_type == "application/json",
                                ndjson=media_type == "application/x-ndjson")
        return {"lines": text.lines, "has_next": text.has_next, "encoding": text.encoding}
    image = render.render_image(reader, watermark=mark or None)
    return {"image": image.data, "image_type": image.media_type, "width": image.width, "height": image.height}


async def view(services: Any, authorization: DatasetAuthorization, path: str | None = None,
               page: int = 1) -> ViewResult:
    """Render one page of one file (masked, watermarked) and account the rows shown; raw bytes never leave."""
    now = services.clock.now()
    _check(authorization, "view", now)
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= MAX_PAGE:
        raise UsageError("page must be a positive number")
    clean = _path(path)
    async with services.db() as db:
        dataset, user = await _current(db, authorization, now)
        await _approval_still_open(db, authorization, user, now)
        file = await _file(db, dataset, clean)
    identity, mask = authorization.identity, authorization.mask
    view_id = secrets.token_hex(4)
    mark = render.watermark_text(identity.name, now.strftime("%Y-%m-%d %H:%M UTC"), identity.source_addr or "-",
                                 view_id) if authorization.watermark else ""
    per_page = services.config["publish.rows_per_page"]
    kind = render.view_kind(file.media_type)
    result = ViewResult(dataset=dataset.name, version=dataset.current_version, path=file.path,
                        media_type=file.media_type, kind=kind, page=page, per_page=per_page, mask=mask,
                        view_id=view_id, watermark_text=mark)
    if kind == render.IMAGE and mask != "none":
        result = replace(result, kind=render.NONE, notice=_NO_MASKED_IMAGES)
    elif kind == render.NONE:
        result = replace(result, notice=_NO_VIEWER)
    else:
        async with _render_slot(user.id):
            reader = await BlobStore.from_services(services).open(file.sha256)
            try:
                result = replace(result, **await in_thread(_render, kind, reader, file.media_type, page, per_page,
                                                           mask, mark))
            except RenderError:
                # A failed render (a page too deep, a damaged file) did the work too: it costs a row.
                await _account_rows(services, authorization, user.id, replace(result, kind=render.NONE), now)
                raise
            finally:
                reader.close()
        result = await _account_rows(services, authorization, user.id, result, now)
    if mark and result.kind in (render.TABLE, render.TEXT):
        result = replace(result, watermark_png=await in_thread(render.watermark_png, mark))
    await services.audit.emit(DatasetView(
        actor=identity.name, source=identity.source_addr, target=dataset.name, dataset=dataset.name,
        version=dataset.current_version, path=file.path, kind=result.kind, page=page, rows=result.rows_viewed,
        view_id=view_id, grant_id=authorization.grant_id, mask=mask, watermark=bool(mark), level=identity.level))
    return result


async def _account_rows(services: Any, authorization: DatasetAuthorization, user_id: int, result: ViewResult,
                        now: dt.datetime) -> ViewResult:
    """Count the rows (table rows, text lines; an image counts one) against the daily limit; shorten the
    page to what is left, refuse when nothing is."""
    # Every render costs at least one row, so pages past the end cannot scan a file for free all day.
    shown = max(1, len(result.rows) if result.kind == render.TABLE else len(result.lines)
                if result.kind == render.TEXT else 1)
    limit, day = services.config["publish.rows_per_day"], _day(now)
    async with services.db() as db, db.begin():
        granted, after = await _charge(db, user_id, day, "rows_viewed", shown, limit, partial=True)
    if granted == 0:
        await _alert(services, authorization, "rows", limit, await _usage(services, user_id, day, "rows_viewed"),
                     shown, day, "refused")
        raise Refused("daily view limit reached")
    if limit and after >= limit:
        await _alert(services, authorization, "rows", limit, after, shown, day, "reached")
    if granted < shown:
        if result.kind == render.TABLE:
            result = replace(result, rows=result.rows[:granted])
        else:
            result = replace(result, lines=result.lines[:granted])
        result = replace(result, has_next=False, notice="the daily limit of rows viewed is reached: "
                                                        "this page is shortened")
    return replace(result, rows_viewed=granted)


# --- download --------------------------------------------------------------------------------------------


class DownloadStream:
    """The plaintext of one authorised download: iterate it once (hash checked at the end), or read ranges
    with `read_at` (SFTP). Close it with `aclose()` (or `async with`) when done early."""

    def __init__(self, reader: BlobReader, sha256: str, path: str, download_id: str,
                 still_granted: Callable[[], Awaitable[None]] | None = None,
                 recheck_every: Callable[[], float] = lambda: 15.0):
        self._reader = reader
        # An open download is re-checked as live sessions are: a revoked or expired grant, an unpublished
        # dataset or a disabled user stops it (Refused) within the re-check interval.
        self._still_granted = still_granted
        self._recheck_every = recheck_every
        self._checked_at = monotonic()
        self.size = reader.size
        self.sha256 = sha256
        self.path = path
        self.download_id = download_id
        self._iterator: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is None:
            self._iterator = self._iterate()
        return self._iterator

    async def _iterate(self) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        reader = self._reader

        def piece(offset: int) -> bytes:
            data = reader.chunk(offset // reader.chunk_size)
            digest.update(data)
            return data

        try:
            offset = 0
            while offset < self.size:
                await self._recheck_if_due()
                data = await in_thread(piece, offset)
                offset += len(data)
                yield data
            if digest.hexdigest() != self.sha256:
                # Chunks authenticate themselves; this guards the whole (and the audited hash) end to end.
                raise BlobError(f"blob {self.sha256[:12]}: content does not match its SHA-256")
        finally:
            reader.close()

    async def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` (at most 1 MiB) bytes at `offset`; b"" at or past the end."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        await self._recheck_if_due()
        return await in_thread(self._reader.pread, offset, min(length, MAX_RANGE_READ))

    async def _recheck_if_due(self) -> None:
        if self._still_granted is not None and monotonic() - self._checked_at >= self._recheck_every():
            await self._still_granted()
            self._checked_at = monotonic()

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        self._reader.close()

    async def __aenter__(self) -> "DownloadStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _grant_serves_downloads(authorization: DatasetAuthorization, now: dt.datetime) -> tuple:
    """The grant's row, as long as it is current and for downloads (re-read where it is locked)."""
    return (DatasetGrant.id == authorization.grant_id, DatasetGrant.revoked_at.is_(None),
            DatasetGrant.mode.in_(("download", "download-with-approval")),
            or_(DatasetGrant.valid_until.is_(None), DatasetGrant.valid_until > now))


async def _count(db: AsyncSession, services: Any, authorization: DatasetAuthorization, user: User,
                 file: DatasetFile, now: dt.datetime) -> tuple[int, int, int | None]:
    """Serve `file` as part of a download already counted (the open copy the policy named, if this file is
    not yet served under it), or count a new one against the grant and its approval. Returns the grant's
    download count, the copy's id and the approval it spent; raises Refused (nothing written) when neither
    is possible.

    Both ways start with a guarded update of the grant's row: a revocation committed since `_current` read
    it is seen, and the row stays locked to the end of the transaction, so two requests queue there.
    """
    if authorization.copy_id is not None:
        locked = (await db.execute(
            update(DatasetGrant).where(*_grant_serves_downloads(authorization, now))
            .values(downloads=DatasetGrant.downloads).returning(DatasetGrant.downloads)
            .execution_options(synchronize_session=False))).first()
        if locked is None:
            raise Refused("grant revoked, expired or not for downloads")
        copy = await copies.join(db, authorization.copy_id, authorization.grant_id, user.id,
                                 authorization.dataset.version, file.id, now)
        if copy is not None:
            return locked[0], copy.id, copy.request_id
    counted = (await db.execute(
        update(DatasetGrant)
        .where(*_grant_serves_downloads(authorization, now),
               or_(DatasetGrant.max_downloads.is_(None), DatasetGrant.downloads < DatasetGrant.max_downloads))
        .values(downloads=DatasetGrant.downloads + 1)
        .returning(DatasetGrant.downloads, DatasetGrant.mode)
        .execution_options(synchronize_session=False))).first()
    if counted is None:
        raise Refused("download limit of the grant used up, or grant not for downloads")
    downloads, mode = counted
    request_id = None
    if mode == "download-with-approval":
        if authorization.request_id is None:
            raise Refused("approval needed")
        used = await db.execute(
            update(DownloadRequest)
            .where(DownloadRequest.id == authorization.request_id,
                   DownloadRequest.grant_id == authorization.grant_id,
                   DownloadRequest.user_id == user.id, DownloadRequest.status == "approved",
                   or_(DownloadRequest.expires_at.is_(None), DownloadRequest.expires_at > now))
            .values(status="used").execution_options(synchronize_session=False))
        if used.rowcount != 1:
            raise Refused("approval missing, expired or already used")
        request_id = authorization.request_id
    copy_id = await copies.open_copy(db, authorization.grant_id, user.id, authorization.dataset.version, request_id,
                                     file.id, now, services.config["publish.download_minutes"])
    return downloads, copy_id, request_id


async def download(services: Any, authorization: DatasetAuthorization,
                   path: str | None = None, *, session_id: str = "") -> tuple[DownloadStream, int, str]:
    """Count the download (grant, approval, daily bytes), audit it, then hand out the plaintext stream.

    Returns (stream, size, sha256). Everything is counted and audited before the first byte; a refusal
    leaves every counter as it was.
    """
    now = services.clock.now()
    _check(authorization, "download", now)
    if authorization.mask != "none":
        raise Refused("a masking grant never serves the raw file")
    clean = _path(path)
    async with services.db() as db:
        dataset, user = await _current(db, authorization, now)
        file = await _file(db, dataset, clean)
    # Open (and so check) the blob before anything is counted: a damaged store refuses cleanly.
    reader = await BlobStore.from_services(services).open(file.sha256)
    limit, day = services.config["publish.bytes_per_day"], _day(now)
    try:
        try:
            async with services.db() as db, db.begin():
                await _current(db, authorization, now)
                downloads, copy_id, request_id = await _count(db, services, authorization, user, file, now)
                granted, _ = await _charge(db, user.id, day, "bytes_downloaded", file.size, limit, partial=False)
                if granted != file.size:
                    raise _OverQuota("bytes", limit, file.size)
        except _OverQuota as over:
            await _alert(services, authorization, "bytes", limit,
                         await _usage(services, user.id, day, "bytes_downloaded"), over.requested, day, "refused")
            raise Refused("daily download limit reached") from None
        download_id = secrets.token_hex(4)
        identity = authorization.identity
        await services.audit.emit(DatasetDownload(
            actor=identity.name, source=identity.source_addr, target=dataset.name, session_id=session_id,
            dataset=dataset.name,
            version=dataset.current_version, path=file.path, size=file.size, sha256=file.sha256,
            grant_id=authorization.grant_id, request_id=request_id, download_id=download_id,
            downloads=downloads, copy_id=copy_id, level=identity.level))
        if limit and file.size and await _usage(services, user.id, day, "bytes_downloaded") >= limit:
            await _alert(services, authorization, "bytes", limit, limit, file.size, day, "reached")
    except BaseException:
        reader.close()
        raise

    async def still_granted() -> None:
        try:
            async with services.db() as db:
                await _current(db, authorization, services.clock.now(), same_version=False)
        except Refused as exc:
            await services.audit.emit(DatasetDownloadStopped(
                actor=identity.name, source=identity.source_addr, target=dataset.name, outcome="stopped",
                dataset=dataset.name, path=file.path, download_id=download_id, reason=exc.reason))
            raise

    stream = DownloadStream(reader, file.sha256, file.path, download_id, still_granted,
                            lambda: services.config["policy.recheck_interval"])
    return stream, file.size, file.sha256
