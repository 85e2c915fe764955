"""Download copies: one counted download of a dataset covers each file of its version once, for a while."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bastion.publish.errors import Refused
from bastion.store.models import DatasetFile, DownloadCopy, DownloadCopyFile


def _served(copy_id) -> "select":
    return select(func.count()).select_from(DownloadCopyFile).where(DownloadCopyFile.copy_id == copy_id)\
        .scalar_subquery()


async def open_copies(db: AsyncSession, grant_ids: list[int], user_id: int, dataset_id: int, version: int,
                      now: dt.datetime, path: str | None = None) -> dict[int, int]:
    """grant id -> the newest copy of `version` this user may still take files under (unexpired, not all
    files served yet, and with `path` given, not that file): a copy that cannot serve the file asked for
    must not outrank a grant that could."""
    if not grant_ids:
        return {}
    files = select(func.count()).select_from(DatasetFile).where(
        DatasetFile.dataset_id == dataset_id, DatasetFile.version == version).scalar_subquery()
    query = select(DownloadCopy.grant_id, DownloadCopy.id).where(
        DownloadCopy.grant_id.in_(grant_ids), DownloadCopy.user_id == user_id, DownloadCopy.version == version,
        DownloadCopy.expires_at > now, _served(DownloadCopy.id) < files)
    if path is not None:
        query = query.where(~exists().where(
            DownloadCopyFile.copy_id == DownloadCopy.id, DownloadCopyFile.file_id == DatasetFile.id,
            DatasetFile.dataset_id == dataset_id, DatasetFile.version == version, DatasetFile.path == path))
    rows = (await db.execute(query.order_by(DownloadCopy.id))).all()
    return {grant_id: copy_id for grant_id, copy_id in rows}  # ascending ids: the newest wins


async def join(db: AsyncSession, copy_id: int, grant_id: int, user_id: int, version: int, file_id: int,
               now: dt.datetime) -> DownloadCopy | None:
    """Take `file_id` under an open copy of this grant, user and version, and return the copy; None if that
    copy is closed, someone else's, of another version, or has served this file already (the caller then
    counts anew).

    The caller must hold the grant's row lock first (its guarded update): two takes of one file then queue
    there, and the second sees the first's row. Should they meet on the table's key all the same, the take
    is refused, never served twice.
    """
    copy = await db.get(DownloadCopy, copy_id)
    if copy is None or (copy.grant_id, copy.user_id, copy.version) != (grant_id, user_id, version) \
            or not now < copy.expires_at:
        return None
    if await db.get(DownloadCopyFile, (copy_id, file_id)) is not None:
        return None
    db.add(DownloadCopyFile(copy_id=copy_id, file_id=file_id))
    try:
        await db.flush()
    except IntegrityError:
        raise Refused("file already served under this download") from None
    return copy


async def open_copy(db: AsyncSession, grant_id: int, user_id: int, version: int, request_id: int | None,
                    file_id: int, now: dt.datetime, minutes: float) -> int:
    """Record a newly counted download as a copy that starts with `file_id`; returns its id."""
    copy = DownloadCopy(grant_id=grant_id, user_id=user_id, version=version, request_id=request_id,
                        opened_at=now, expires_at=now + dt.timedelta(minutes=minutes))
    db.add(copy)
    await db.flush()
    db.add(DownloadCopyFile(copy_id=copy.id, file_id=file_id))
    await db.flush()
    return copy.id
