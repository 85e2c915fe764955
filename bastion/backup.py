"""Encrypted backups of a data directory (database, keys, config, recordings, blobs) and restore into a fresh one.

A backup is ONE file::

    header   b"BASTBKUP\\x01" | u32 n | n bytes UTF-8 JSON, in clear:
               {"format": 1, "cipher": "AES-256-GCM", "chunk_size": 1048576,
                "kdf": {"name": "argon2id", "salt": b64, "iterations": 3, "lanes": 4, "memory_kib": 65536},
                "nonce_prefix": b64 (7 bytes), "check": b64 (32 bytes)}
    chunk*   u8 last | u32 m | m bytes AES-256-GCM ciphertext + tag   (16 <= m <= chunk_size + 16)
               key   = HKDF-SHA256(Argon2id(passphrase, salt), info "bastion-backup v1 key")
               nonce = nonce_prefix | u32 chunk index | u8 last
               AAD   = sha256(header bytes)
             exactly one chunk, the final one, has last = 1; nothing may follow it.

`check` is HKDF(..., info "bastion-backup v1 check"): a wrong passphrase (or an altered header,
which changes the key) is told apart from a damaged body before anything is decrypted.  The index
and the last flag in each nonce make a removed, reordered, duplicated or cut-off chunk fail, and a
flipped bit fails its chunk's tag.  Chunks are written and read one at a time, so neither side
ever holds more than a chunk (and one record) in memory.

The decrypted stream is a sequence of records ``u8 type | u32 n | n bytes``:

    H  JSON  backup metadata: created, node, source backend, Alembic revision, old paths
    F  JSON  {"area": config|keys|anchors|recordings|blobs, "path": relative POSIX path, "mode": int}
    D  bytes the current file's content, in pieces of at most 1 MiB
    E  JSON  {"size": bytes of the file}
    T  JSON  {"name": table, "columns": [[name, "plain"|"bytes"|"datetime"|"json"], ...]}
    R  JSON  a batch of rows, each a list in column order (bytes base64, datetimes ISO 8601 UTC)
    U  JSON  {"rows": rows of the table}
    Z  JSON  {"tables", "rows", "files"}: the end; anything after it, or no Z at all, is an error

The database is dumped inside one read snapshot (SQLite: one read transaction; PostgreSQL:
REPEATABLE READ), every table with its primary keys, so the audit chain and its head restore
exactly.  Restore writes into a temporary directory next to the new data directory, creates the
schema at the backup's revision, loads the rows, migrates to the current revision, and renames the
directory into place only when the whole file has been authenticated: a wrong passphrase, a damaged
or cut-off file leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
import tomllib
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import MetaData, event, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import sqltypes

from bastion import __version__
from bastion.audit.anchor import ANCHOR_FILE, anchor_path
from bastion.audit.events import BackupCreated, BackupRestored
from bastion.audit.log import AuditLog, canonical, chain_hash, hashed_fields
from bastion.clock import Clock
from bastion.config import CONFIG_FILE, Config, load_config
from bastion.errors import BastionError, Conflict, UsageError
from bastion.privatefiles import fsync_dir
from bastion.recorder.store import recording_path
from bastion.store.engine import async_url, make_engine, make_sessionmaker
from bastion.store.migrate import MIGRATIONS_DIR
from bastion.store.models import AuditEvent, AuditHead

log = logging.getLogger("bastion.backup")

MAGIC = b"BASTBKUP\x01"
FORMAT = 1
CIPHER = "AES-256-GCM"
CHUNK_SIZE = 1 << 20
TAG = 16
NONCE_PREFIX = 7
MAX_HEADER = 4096
MAX_RECORD = 64 << 20
FILE_PIECE = 1 << 20
ROW_BATCH = 500
ROW_BATCH_BYTES = 1 << 20
MIN_PASSPHRASE = 12
KDF = {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_kib": 64 * 1024}
# A hostile header must not make restore spend unbounded memory or time in the KDF.
KDF_LIMITS = {"iterations": 16, "lanes": 16, "memory_kib": 1024 * 1024}
AREAS = ("config", "keys", "anchors", "recordings", "blobs")
SIDECARS = (".bkf",)  # replay seek points next to a recording, sealed under its key
DB_TIMEOUT = 60.0
_U32 = struct.Struct(">I")
_CHUNK_HEAD = struct.Struct(">BI")


class BackupError(BastionError):
    """A backup could not be written, or a file is not a backup this passphrase opens intact."""


# -- encryption layer ----------------------------------------------------------------------------------------


def _derive(passphrase: str, kdf: dict[str, Any], salt: bytes) -> tuple[bytes, bytes]:
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    root = Argon2id(salt=salt, length=32, iterations=kdf["iterations"], lanes=kdf["lanes"],
                    memory_cost=kdf["memory_kib"]).derive(secret)

    def expand(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root)

    return expand(b"bastion-backup v1 key"), expand(b"bastion-backup v1 check")


class _SealWriter:
    """Encrypts a byte stream into the chunked file format, one chunk at a time (synchronous)."""

    def __init__(self, out: BinaryIO, passphrase: str):
        kdf = dict(KDF)
        salt, prefix = os.urandom(16), os.urandom(NONCE_PREFIX)
        key, check = _derive(passphrase, kdf, salt)
        header = json.dumps({
            "format": FORMAT, "cipher": CIPHER, "chunk_size": CHUNK_SIZE,
            "kdf": {**kdf, "salt": base64.b64encode(salt).decode()},
            "nonce_prefix": base64.b64encode(prefix).decode(), "check": base64.b64encode(check).decode(),
        }, sort_keys=True, separators=(",", ":")).encode()
        raw = MAGIC + _U32.pack(len(header)) + header
        self._out, self._aead, self._prefix = out, AESGCM(key), prefix
        self._aad = hashlib.sha256(raw).digest()
        self._buffer = bytearray()
        self._index = 0
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._emit(raw)

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def _seal(self, plain: bytes, last: bool) -> None:
        nonce = self._prefix + _U32.pack(self._index) + bytes([last])
        sealed = self._aead.encrypt(nonce, plain, self._aad)
        self._emit(_CHUNK_HEAD.pack(int(last), len(sealed)) + sealed)
        self._index += 1
        if self._index >= 1 << 32:
            raise BackupError("backup too large for one file")

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) > CHUNK_SIZE:  # keep the tail: the final chunk must carry the last flag
            self._seal(bytes(self._buffer[:CHUNK_SIZE]), False)
            del self._buffer[:CHUNK_SIZE]

    def record(self, kind: bytes, payload: bytes) -> None:
        self.write(kind + _U32.pack(len(payload)) + payload)

    def finish(self) -> None:
        self._seal(bytes(self._buffer), True)
        self._buffer.clear()


class _OpenReader:
    """Authenticates and decrypts the chunked file one chunk at a time (synchronous)."""

    def __init__(self, stream: BinaryIO, passphrase: str):
        self._in = stream
        head = stream.read(len(MAGIC) + _U32.size)
        if head[:len(MAGIC) - 1] != MAGIC[:len(head)][:len(MAGIC) - 1] or not head:
            raise BackupError("not a Bastion backup (bad magic)")
        if len(head) >= len(MAGIC) and head[len(MAGIC) - 1] != MAGIC[-1]:
            raise BackupError(f"unsupported backup format version {head[len(MAGIC) - 1]}")
        if len(head) < len(MAGIC) + _U32.size:
            raise BackupError("the backup is truncated (it ends inside its header)")
        (length,) = _U32.unpack_from(head, len(MAGIC))
        if length > MAX_HEADER:
            raise BackupError("the backup header is malformed (altered)")
        body = stream.read(length)
        if len(body) < length:
            raise BackupError("the backup is truncated (it ends inside its header)")
        try:
            meta = json.loads(body)
            kdf = meta["kdf"]
            salt = base64.b64decode(kdf["salt"], validate=True)
            prefix = base64.b64decode(meta["nonce_prefix"], validate=True)
            check = base64.b64decode(meta["check"], validate=True)
            params = {name: kdf[name] for name in KDF_LIMITS}
            valid = (meta["format"] == FORMAT and meta["cipher"] == CIPHER and kdf["name"] == "argon2id"
                     and meta["chunk_size"] == CHUNK_SIZE and len(prefix) == NONCE_PREFIX and len(check) == 32
                     and 8 <= len(salt) <= 64
                     and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= KDF_LIMITS[k]
                             for k, v in params.items())
                     and params["memory_kib"] >= 8 * params["lanes"])
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise BackupError("the backup header is malformed or from an unsupported version (altered?)")
        key, expected = _derive(passphrase, params, salt)
        if not hmac.compare_digest(check, expected):
            raise BackupError("wrong passphrase (or the backup header was altered)")
        self._aead, self._prefix = AESGCM(key), prefix
        self._aad = hashlib.sha256(head + body).digest()
        self._offset = len(head) + length
        self._index = 0
        self._plain = b""
        self._pos = 0
        self._last_seen = False

    def _next_chunk(self) -> None:
        if self._last_seen:
            raise BackupError("the backup is damaged: its content ends before its last record")
        where = self._offset
        head = self._in.read(_CHUNK_HEAD.size)
        if not head:
            raise BackupError(f"the backup is truncated: it ends after chunk {self._index - 1}, "
                              "before its final chunk")
        if len(head) < _CHUNK_HEAD.size:
            raise BackupError(f"the backup is truncated: it ends inside chunk {self._index}")
        last, length = _CHUNK_HEAD.unpack(head)
        if last > 1 or not TAG <= length <= CHUNK_SIZE + TAG:
            raise BackupError(f"the backup is damaged or was altered at chunk {self._index} (byte {where})")
        sealed = self._in.read(length)
        if len(sealed) < length:
            raise BackupError(f"the backup is truncated: it ends inside chunk {self._index}")
        nonce = self._prefix + _U32.pack(self._index) + bytes([last])
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            raise BackupError(f"the backup is damaged or was altered at chunk {self._index} (byte {where}): "
                              "it fails authentication") from None
        self._offset += _CHUNK_HEAD.size + length
        self._index += 1
        self._last_seen = bool(last)
        self._plain = self._plain[self._pos:] + plain
        self._pos = 0

    def read(self, size: int) -> bytes:
        while len(self._plain) - self._pos < size:
            self._next_chunk()
        data = self._plain[self._pos:self._pos + size]
        self._pos += size
        return data

    def record(self) -> tuple[bytes, bytes]:
        head = self.read(1 + _U32.size)
        (length,) = _U32.unpack_from(head, 1)
        if length > MAX_RECORD:
            raise BackupError("the backup content is malformed (a record is too large)")
        return head[:1], self.read(length)

    def finish(self) -> None:
        """After the end record: the final chunk must have been read and nothing may follow."""
        if self._pos != len(self._plain) or not self._last_seen:
            raise BackupError("the backup is damaged: data follows its end record")
        if self._in.read(1):
            raise BackupError("the backup was altered: bytes follow its final chunk")


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        raise BackupError("the backup content is malformed") from None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# -- values ---------------------------------------------------------------------------------------------------


def _code(column_type: Any) -> str:
    if isinstance(column_type, sqltypes.LargeBinary):
        return "bytes"
    if isinstance(column_type, sqltypes.DateTime):
        return "datetime"
    if isinstance(column_type, sqltypes.JSON):
        return "json"
    return "plain"


def _encode(value: Any, code: str, where: str) -> Any:
    if value is None:
        return None
    if code == "bytes":
        return base64.b64encode(bytes(value)).decode("ascii")
    if code == "datetime":
        aware = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)  # SQLite keeps UTC, naive
        return aware.astimezone(dt.timezone.utc).isoformat()
    if code == "plain" and not isinstance(value, (bool, int, float, str)):
        raise BackupError(f"{where}: values of type {type(value).__name__} cannot be backed up")
    return value


def _decode(value: Any, code: str) -> Any:
    if value is None:
        return None
    try:
        if code == "bytes":
            return base64.b64decode(value, validate=True)
        if code == "datetime":
            parsed = dt.datetime.fromisoformat(value)
            return parsed.astimezone(dt.timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    except (ValueError, TypeError):
        raise BackupError("the backup content is malformed (a value does not decode)") from None
    return value


# -- paths ----------------------------------------------------------------------------------------------------


def _relative_recording(path: str, old_dir: str, session_id: str, created_at: dt.datetime | None) -> str:
    """Where a recording goes under the new recordings directory (same layout as the old one)."""
    try:
        rel = PurePosixPath(Path(path).relative_to(old_dir).as_posix())
        if rel.parts and ".." not in rel.parts:
            return str(rel)
    except ValueError:
        pass
    when = created_at or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return recording_path(Path("."), session_id, when).as_posix().removeprefix("./")


_SAFE_PART = re.compile(r"[A-Za-z0-9._@+-][A-Za-z0-9._@+ -]{0,254}")


def _safe_relative(area: str, path: str) -> PurePosixPath:
    """A path from the backup, refused unless it is plainly inside its area."""
    rel = PurePosixPath(path)
    if (area not in AREAS or not isinstance(path, str) or len(path) > 1024 or rel.is_absolute() or not rel.parts
            or any(part in (".", "..") or not _SAFE_PART.fullmatch(part) for part in rel.parts)):
        raise BackupError("the backup content is malformed (an unsafe file path)")
    return rel


def _area_dir(root: Path, area: str) -> Path:
    return {"config": root, "anchors": root, "keys": root / "keys", "recordings": root / "recordings",
            "blobs": root / "blobs"}[area]


def _blob_dir(config: Config) -> Path:
    """Where dataset blobs live (setting publish.blob_dir, default <data dir>/blobs)."""
    return Path(config.values.get("publish.blob_dir") or config.data_dir / "blobs")


# -- create ---------------------------------------------------------------------------------------------------


def _snapshot_engine(url: str) -> AsyncEngine:
    """An engine whose transactions read one consistent snapshot of every table."""
    url = async_url(url)
    if not url.startswith("sqlite"):
        return create_async_engine(url, isolation_level="REPEATABLE READ", pool_size=1, max_overflow=0)
    engine = create_async_engine(url, connect_args={"timeout": 10})

    # pysqlite would start a transaction only before writes, so each SELECT would see its own
    # moment; an explicit BEGIN makes them all read the same one.
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _check_passphrase(passphrase: str) -> None:
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE:
        raise UsageError(f"the backup passphrase must have at least {MIN_PASSPHRASE} characters")


class _Counter:
    def __init__(self) -> None:
        self.tables = self.rows = self.files = self.missing = 0


async def create_backup(services_or_config: Any, out_path: str | os.PathLike[str], passphrase: str, *,
                        actor: str = "backup") -> dict[str, Any]:
    """Write one encrypted file holding the database, keys, bastion.toml, anchors, recordings and dataset blobs."""
    _check_passphrase(passphrase)
    config: Config = getattr(services_or_config, "config", services_or_config)
    out_path = Path(out_path).absolute()
    if out_path.exists():
        raise Conflict(f"{out_path} exists; refusing to overwrite it")
    partial = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackupError(f"backup cannot be written to {out_path.parent} ({exc.strerror})") from None
    count = _Counter()
    engine = _snapshot_engine(config.database_url)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = await asyncio.to_thread(_SealWriter, handle, passphrase)
            files = await _write_snapshot(engine, config, writer, count)
            for area, rel, source, optional in files:
                if await asyncio.to_thread(_write_file, writer, area, rel, source):
                    count.files += 1
                elif not optional:
                    count.missing += 1
                    log.warning("backup: %s file %s is missing; its row is backed up without it", area, source)
            writer.record(b"Z", _dumps({"tables": count.tables, "rows": count.rows, "files": count.files}))
            await asyncio.to_thread(_finish, writer, handle)
        os.rename(partial, out_path)
        fsync_dir(out_path.parent)
    except BaseException as exc:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise BackupError(f"backup not written ({exc.strerror or type(exc).__name__})") from None
        raise
    finally:
        await engine.dispose()
    summary = {"file": str(out_path), "size": writer.size, "sha256": writer.sha256.hexdigest(),
               "tables": count.tables, "rows": count.rows, "files": count.files, "missing": count.missing}
    await _audit_created(services_or_config, config, actor, summary)
    return summary


def _finish(writer: _SealWriter, handle: BinaryIO) -> None:
    writer.finish()
    handle.flush()
    os.fsync(handle.fileno())


async def _audit_created(services_or_config: Any, config: Config, actor: str, summary: dict[str, Any]) -> None:
    event_ = BackupCreated(actor=actor, source="local", file=summary["file"][-256:], size=summary["size"],
                           sha256=summary["sha256"], rows=summary["rows"], files=summary["files"],
                           missing=summary["missing"])
    audit = getattr(services_or_config, "audit", None)
    if audit is not None:
        await audit.emit(event_)
        return
    engine = make_engine(config.database_url)
    try:
        await AuditLog(make_sessionmaker(engine), config.node_name, Clock()).emit(event_)
    finally:
        await engine.dispose()


async def _write_snapshot(engine: AsyncEngine, config: Config, writer: _SealWriter,
                          count: _Counter) -> list[tuple[str, str, Path, bool]]:
    """Header, config, keys, anchors and every table from one snapshot; return the files its rows name.

    Those are the recordings (with their sidecars) and the dataset blobs, copied after the snapshot;
    a file removed meanwhile (shredded, deleted) is counted as missing.

    No overall timeout: a backup takes as long as the data needs (the command can be interrupted).
    """
    async with asyncio.timeout(DB_TIMEOUT):
        conn = await engine.connect()
    try:
        async with conn.begin():
            revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
            metadata = MetaData()
            await conn.run_sync(metadata.reflect)
            header = {"bastion": __version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                      "node": config.node_name, "host": socket.gethostname(),
                      "backend": conn.dialect.name, "revision": revision, "data_dir": str(config.data_dir),
                      "recordings_dir": str(config.recordings_dir)}
            writer.record(b"H", _dumps(header))
            for area, rel, source in _static_files(config):
                if await asyncio.to_thread(_write_file, writer, area, rel, source):
                    count.files += 1
            for table in metadata.sorted_tables:
                if table.name != "alembic_version":
                    await _dump_table(conn, table, writer, count)
            files: list[tuple[str, str, Path, bool]] = []
            if "recordings" in metadata.tables:
                table = metadata.tables["recordings"]
                rows = await conn.execute(select(table.c.session_id, table.c.path, table.c.created_at)
                                          .where(table.c.shredded_at.is_(None)))
                for session_id, path, created_at in rows:
                    rel = _relative_recording(path, str(config.recordings_dir), session_id, created_at)
                    files.append(("recordings", rel, Path(path), False))
                    for suffix in SIDECARS:
                        files.append(("recordings", str(PurePosixPath(rel).with_suffix(suffix)),
                                      Path(path).with_suffix(suffix), True))
            if "blobs" in metadata.tables:
                blob_dir = _blob_dir(config)
                for (digest,) in await conn.execute(select(metadata.tables["blobs"].c.sha256)):
                    if re.fullmatch(r"[0-9a-f]{64}", digest):  # content-addressed: <dir>/<sha[:2]>/<sha>
                        files.append(("blobs", f"{digest[:2]}/{digest}", blob_dir / digest[:2] / digest, False))
            return files
    finally:
        await conn.close()


def _static_files(config: Config) -> list[tuple[str, str, Path]]:
    files = [("config", CONFIG_FILE, config.data_dir / CONFIG_FILE)]
    keys = config.keys_dir
    for directory, _dirs, names in sorted(os.walk(keys)):
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                log.warning("backup: %s is not a regular file; skipped", path)
                continue
            files.append(("keys", path.relative_to(keys).as_posix(), path))
    anchors = anchor_path(config)
    if anchors.exists():
        files.append(("anchors", ANCHOR_FILE, anchors))
    return files


def _write_file(writer: _SealWriter, area: str, rel: str, source: Path) -> bool:
    """Copy one file into the backup in pieces; False when it does not exist (nothing written)."""
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        return False
    with handle:
        mode = os.fstat(handle.fileno()).st_mode & 0o777
        writer.record(b"F", _dumps({"area": area, "path": rel, "mode": mode}))
        size = 0
        while piece := handle.read(FILE_PIECE):
            writer.record(b"D", piece)
            size += len(piece)
        writer.record(b"E", _dumps({"size": size}))
    return True


async def _dump_table(conn: AsyncConnection, table: Any, writer: _SealWriter, count: _Counter) -> None:
    columns = [(column.name, _code(column.type)) for column in table.columns]
    writer.record(b"T", _dumps({"name": table.name, "columns": columns}))
    order = list(table.primary_key.columns) or list(table.columns)
    result = await conn.stream(select(table).order_by(*order))
    batch: list[list[Any]] = []
    size = rows = 0
    async for row in result:
        encoded = [_encode(value, code, f"{table.name}.{name}") for value, (name, code) in zip(row, columns)]
        batch.append(encoded)
        size += len(_dumps(encoded))
        rows += 1
        if len(batch) >= ROW_BATCH or size >= ROW_BATCH_BYTES:
            writer.record(b"R", _dumps(batch))
            batch, size = [], 0
    if batch:
        writer.record(b"R", _dumps(batch))
    writer.record(b"U", _dumps({"rows": rows}))
    count.tables += 1
    count.rows += rows


# -- restore --------------------------------------------------------------------------------------------------


def _alembic(connection: Any) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Any, revision: str) -> None:
    command.upgrade(_alembic(connection), revision)


def _known_revision(revision: Any) -> None:
    if not isinstance(revision, str):
        raise BackupError("the backup holds no schema revision")
    try:
        found = ScriptDirectory.from_config(_alembic(None)).get_revision(revision)
    except CommandError:
        found = None
    if found is None:
        raise BackupError(f"the backup was made with database schema {revision[:40]!r}, which this version of "
                          "Bastion does not know; restore it with the version that made it (or a newer one)")


class _Restore:
    """State of one restore: where files go, which tables were loaded, the counts."""

    def __init__(self, reader: _OpenReader, root: Path, final: Path, conn: AsyncConnection):
        self.reader, self.root, self.final, self.conn = reader, root, final, conn
        self.metadata = MetaData()
        self.header: dict[str, Any] = {}
        self.rows = self.files = 0
        self.tables: set[str] = set()
        self.recording_files: dict[str, str] = {}

    async def next(self) -> tuple[bytes, bytes]:
        return await asyncio.to_thread(self.reader.record)


def _restore_file(restore: _Restore, entry: dict[str, Any]) -> str:
    """Write one file from F/D/E records; key files keep their mode (0600)."""
    area, mode = entry.get("area"), entry.get("mode")
    rel = _safe_relative(area, entry.get("path"))
    if (area, str(rel)) in (("config", CONFIG_FILE), ("anchors", ANCHOR_FILE)):
        pass
    elif area in ("config", "anchors"):
        raise BackupError("the backup content is malformed (an unsafe file path)")
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise BackupError("the backup content is malformed (a file mode)")
    base = _area_dir(restore.root, area)
    target = base.joinpath(*rel.parts)
    current = restore.root
    for part in target.parent.relative_to(restore.root).parts:
        current = current / part
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise BackupError("the backup content is malformed (a file appears twice)") from None
    size = 0
    try:
        os.fchmod(fd, mode & 0o777)
        while True:
            kind, payload = restore.reader.record()
            if kind == b"D":
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                size += len(payload)
            elif kind == b"E":
                if _json(payload).get("size") != size:
                    raise BackupError("the backup content is malformed (a file's size does not match)")
                os.fsync(fd)
                break
            else:
                raise BackupError("the backup content is malformed (a file is not closed)")
    finally:
        os.close(fd)
    return str(rel)


async def _restore_table(restore: _Restore, spec: dict[str, Any]) -> None:
    name, columns = spec.get("name"), spec.get("columns")
    table = restore.metadata.tables.get(name) if isinstance(name, str) else None
    if table is None or not isinstance(columns, list):
        raise BackupError(f"the backup holds a table this schema does not have ({str(name)[:40]!r})")
    names = [column[0] for column in columns]
    codes = [column[1] for column in columns]
    unknown = [n for n in names if n not in table.c]
    if unknown:
        raise BackupError(f"the backup's table {name} has columns this schema does not have ({unknown[0][:40]!r})")
    if name in restore.tables:
        raise BackupError("the backup content is malformed (a table appears twice)")
    restore.tables.add(name)
    rows = 0
    while True:
        kind, payload = await restore.next()
        if kind == b"R":
            batch = _json(payload)
            if not isinstance(batch, list) or any(not isinstance(r, list) or len(r) != len(names) for r in batch):
                raise BackupError("the backup content is malformed (a row does not fit its table)")
            values = [{n: _decode(v, c) for n, v, c in zip(names, row, codes)} for row in batch]
            if values:
                async with asyncio.timeout(DB_TIMEOUT):
                    await restore.conn.execute(table.insert(), values)
            rows += len(values)
        elif kind == b"U":
            if _json(payload).get("rows") != rows:
                raise BackupError(f"the backup content is malformed (table {name} is incomplete)")
            restore.rows += rows
            return
        else:
            raise BackupError("the backup content is malformed (a table is not closed)")


async def _check_empty_database(conn: AsyncConnection, url: str) -> None:
    tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    if tables:
        from sqlalchemy.engine import make_url

        raise Conflict(f"database {make_url(url).database!r} already has tables; restore needs an empty database")


async def _rewrite_recording_paths(restore: _Restore) -> int:
    if "recordings" not in restore.metadata.tables:
        return 0
    table = restore.metadata.tables["recordings"]
    new_dir = restore.final / "recordings"
    rows = (await restore.conn.execute(select(table.c.id, table.c.session_id, table.c.path,
                                              table.c.created_at))).all()
    old_dir = restore.header.get("recordings_dir", "")
    for recording_id, session_id, path, created_at in rows:
        rel = _relative_recording(path, old_dir, session_id, created_at)
        await restore.conn.execute(update(table).where(table.c.id == recording_id)
                                   .values(path=str(new_dir.joinpath(*PurePosixPath(rel).parts))))
    return len(rows)


async def _reset_sequences(conn: AsyncConnection, metadata: MetaData) -> None:
    """PostgreSQL: serial counters continue after the restored primary keys."""
    for table in metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        if len(keys) == 1 and isinstance(keys[0].type, sqltypes.Integer):
            column = keys[0].name
            await conn.execute(text(
                f"SELECT setval(pg_get_serial_sequence('\"{table.name}\"', '{column}'), "
                f"COALESCE((SELECT MAX(\"{column}\") FROM \"{table.name}\"), 0) + 1, false)"))


async def _append_restored_event(conn: AsyncConnection, node: str, restore: _Restore, actor: str) -> None:
    """The restored chain's next event says where it came from (written in the restore's transaction)."""
    head = (await conn.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
    event_ = BackupRestored(actor=actor, source="local", backup_created=str(restore.header.get("created", ""))[:64],
                            backup_node=str(restore.header.get("node", ""))[:128], rows=restore.rows,
                            files=restore.files)
    row = AuditEvent(seq=head.seq + 1, ts=dt.datetime.now(dt.timezone.utc), type=event_.event_type,
                     actor=event_.actor, source=event_.source, target=event_.target, session_id=event_.session_id,
                     outcome=event_.outcome, node=node, details=json.loads(canonical(event_.details())),
                     prev_hash=head.hash)
    row.hash = chain_hash(head.hash, hashed_fields(row))
    values = {column.name: getattr(row, column.name) for column in AuditEvent.__table__.columns if column.name != "id"}
    await conn.execute(AuditEvent.__table__.insert(), [values])
    await conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=row.seq, hash=row.hash))


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rewrite_toml(text_: str, changes: dict[str, str | None]) -> str:
    """Set (or, with None, remove) top-level or [section] settings in bastion.toml, keeping the rest."""
    out, seen, section = [], set(), ""
    for line in text_.splitlines(keepends=True):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?", stripped)
        if header:
            section = header.group(1)
        else:
            assignment = re.match(r"([A-Za-z0-9_.-]+)\s*=", stripped)
            if assignment:
                key = assignment.group(1)
                name = f"{section}.{key}" if section else key
                if name in changes:
                    seen.add(name)
                    value = changes[name]
                    if value is None:
                        continue  # dropped entirely: an old URL may hold a password
                    line = f"{key} = {_toml_string(value)}\n"
        out.append(line)
    additions = [f"{name} = {_toml_string(value)}\n" for name, value in changes.items()
                 if value is not None and name not in seen and "." not in name]
    result = "".join(additions + out)
    try:
        flat = _flatten(tomllib.loads(result))
    except tomllib.TOMLDecodeError:
        raise BackupError(f"the restored {CONFIG_FILE} is not valid TOML") from None
    for name, value in changes.items():
        if flat.get(name) != value:  # None: the setting must be gone
            raise BackupError(f"cannot rewrite {name} in the restored {CONFIG_FILE}; edit it by hand")
    return result


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_new_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise Conflict(f"{path} already exists and is not empty; restore needs a fresh data directory")


async def restore_backup(in_path: str | os.PathLike[str], passphrase: str, new_data_dir: str | os.PathLike[str],
                         database_url: str = "", *, actor: str = "restore") -> dict[str, Any]:
    """Restore a backup into a fresh data directory (SQLite in it, or the empty database at `database_url`)."""
    final = Path(new_data_dir).absolute()
    _check_new_dir(final)
    if database_url:
        async_url(database_url)  # a bad URL is a clear error before anything is written
    try:
        stream = open(in_path, "rb")
    except OSError as exc:
        raise BackupError(f"cannot read the backup {in_path} ({exc.strerror})") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{final.name}.restore-", dir=final.parent))
    os.chmod(root, 0o700)
    engine: AsyncEngine | None = None
    try:
        with stream:
            reader = await asyncio.to_thread(_OpenReader, stream, passphrase)
            kind, payload = await asyncio.to_thread(reader.record)
            if kind != b"H":
                raise BackupError("the backup content is malformed (no header record)")
            header = _json(payload)
            _known_revision(header.get("revision"))
            url = database_url or f"sqlite+aiosqlite:///{root / 'bastion.db'}"
            engine = make_engine(url)
            summary = await _restore_into(engine, url, reader, header, root, final, actor, bool(database_url))
        await engine.dispose()
        engine = None
        await asyncio.to_thread(_finalise_config, root, database_url)
        _check_new_dir(final)
        os.rename(root, final)  # replaces an empty directory; the restore appears all at once
        fsync_dir(final.parent)
    except BaseException as exc:
        if engine is not None:
            await engine.dispose()
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, (BastionError, asyncio.CancelledError)) or not isinstance(exc, Exception):
            raise
        log.error("restore failed: %s", type(exc).__name__)
        raise BackupError(f"restore failed ({type(exc).__name__}); nothing was restored") from None
    return {**summary, "data_dir": str(final)}


async def _restore_into(engine: AsyncEngine, url: str, reader: _OpenReader, header: dict[str, Any], root: Path,
                        final: Path, actor: str, external: bool) -> dict[str, Any]:
    async with engine.connect() as conn:
        async with conn.begin():  # one transaction: PostgreSQL rolls all of it back on any error
            if external:
                await _check_empty_database(conn, url)
            await conn.run_sync(_upgrade, header["revision"])
            restore = _Restore(reader, root, final, conn)
            restore.header = header
            await conn.run_sync(restore.metadata.reflect)
            for table in reversed(restore.metadata.sorted_tables):
                if table.name != "alembic_version":
                    await conn.execute(table.delete())  # seed rows (the audit head) come from the backup
            while True:
                kind, payload = await restore.next()
                if kind == b"F":
                    await asyncio.to_thread(_restore_file, restore, _json(payload))
                    restore.files += 1
                elif kind == b"T":
                    await _restore_table(restore, _json(payload))
                elif kind == b"Z":
                    totals = _json(payload)
                    await asyncio.to_thread(reader.finish)
                    if totals.get("rows") != restore.rows or totals.get("files") != restore.files:
                        raise BackupError("the backup content is malformed (its totals do not match)")
                    break
                else:
                    raise BackupError("the backup content is malformed (an unexpected record)")
            if not restore.tables:
                raise BackupError("the backup holds no database tables")
            recordings = await _rewrite_recording_paths(restore)
            await conn.run_sync(_upgrade, "head")
            if conn.dialect.name == "postgresql":
                await _reset_sequences(conn, restore.metadata)
            node = load_config(root, environ={}).node_name if (root / CONFIG_FILE).exists() else socket.gethostname()
            await _append_restored_event(conn, node, restore, actor)
    return {"backup_created": header.get("created"), "backup_node": header.get("node"),
            "source_backend": header.get("backend"), "database": "postgresql" if external else "sqlite",
            "rows": restore.rows, "files": restore.files, "recordings": recordings}


def _finalise_config(root: Path, database_url: str) -> None:
    """Point the restored bastion.toml at the restored database, recordings and anchor file."""
    path = root / CONFIG_FILE
    if not path.exists():
        raise BackupError(f"the backup holds no {CONFIG_FILE}")
    changes = {"database_url": database_url or None, "recording.dir": None, "audit.anchor_file": None,
               "publish.blob_dir": None}
    content = rewrite_toml(path.read_text(encoding="utf-8"), changes)
    mode = path.stat().st_mode & 0o777
    temporary = path.with_name(CONFIG_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    load_config(root, environ={})  # the restored config must load
    (root / "recordings").mkdir(mode=0o700, exist_ok=True)
    (root / "keys").mkdir(mode=0o700, exist_ok=True)
