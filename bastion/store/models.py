"""SQLAlchemy models: users, credentials, targets, accounts, grants, sessions, recordings, audit."""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    device_policy: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)  # off | advisory | required
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    credentials: Mapped[list["Credential"]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Credential(Base):
    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # password | ssh_key | totp | sk_key | webauthn
    public: Mapped[str] = mapped_column(Text, default="")  # hash, public key, credential id
    secret: Mapped[Optional[bytes]] = mapped_column(LargeBinary, nullable=True)  # vault-sealed
    fingerprint: Mapped[str] = mapped_column(String(128), default="", index=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    counter: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)

    user: Mapped[User] = relationship(back_populates="credentials")


class Target(Base):
    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    host_keys: Mapped[str] = mapped_column(Text)  # pinned OpenSSH public keys, one per line
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    min_level: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    device_policy: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    retention_days: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # recordings; None = default
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    accounts: Mapped[list["TargetAccount"]] = relationship(back_populates="target", cascade="all, delete-orphan")


class TargetAccount(Base):
    __tablename__ = "target_accounts"
    __table_args__ = (UniqueConstraint("target_id", "login"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    login: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # key | password
    secret: Mapped[bytes] = mapped_column(LargeBinary)  # vault-sealed private key or password
    public_key: Mapped[str] = mapped_column(Text, default="")
    min_level: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    target: Mapped[Target] = relationship(back_populates="accounts")


class Grant(Base):
    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(8))  # user | group
    subject: Mapped[str] = mapped_column(String(64), index=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("target_accounts.id", ondelete="CASCADE"))
    actions: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    valid_until: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    min_level: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    connection_id: Mapped[str] = mapped_column(String(36), index=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    target_name: Mapped[str] = mapped_column(String(64), index=True)
    account_login: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # shell | exec | sftp | forward
    command: Mapped[str] = mapped_column(Text, default="")
    source_addr: Mapped[str] = mapped_column(String(64))
    source_port: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str] = mapped_column(String(128))
    level: Mapped[int] = mapped_column(Integer, default=1)
    methods: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    device_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    device_proof: Mapped[str] = mapped_column(String(16), default="")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str] = mapped_column(String(64), default="")
    exit_status: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    kill_requested_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    kill_reason: Mapped[str] = mapped_column(String(256), default="")
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    index_key: Mapped[Optional[bytes]] = mapped_column(LargeBinary, nullable=True)  # vault-wrapped search key
    indexed_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)


class SearchEntry(Base):
    """One searchable line of a session (a command typed, or output text), encrypted with the session's index key."""

    __tablename__ = "search_entries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # command | output
    offset: Mapped[float] = mapped_column(Float)   # seconds from the start of the recording
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class AuditAnchor(Base):
    """A copy of the audit chain head written outside the database (file, syslog, webhook) at a time."""

    __tablename__ = "audit_anchors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(256))
    anchored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A console login: the cookie holds a random token, the table only its hash."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(token) hex
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    authenticated: Mapped[bool] = mapped_column(Boolean, default=False)
    methods: Mapped[list[str]] = mapped_column(JSON, default=list)
    required_level: Mapped[int] = mapped_column(Integer, default=1)
    csrf_token: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    device_proof: Mapped[str] = mapped_column(String(16), default="")
    source_addr: Mapped[str] = mapped_column(String(64), default="")
    challenge: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)  # pending WebAuthn state
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A scoped, expiring token for automation; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)


class Approval(Base):
    """A one-time browser approval that raises an SSH login's level (WebAuthn with user verification)."""

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(token) hex
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[str] = mapped_column(String(36))
    target: Mapped[str] = mapped_column(String(64), default="")
    level: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | used | denied
    method: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Blob(Base):
    """Encrypted, content-addressed file content (sha256 of the plaintext names it)."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)   # the blob's data key, wrapped by the vault
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Dataset(Base):
    """A file or folder that admins publish; unpublished, it does not exist for users."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    classification: Mapped[str] = mapped_column(String(16), default="internal")  # public|internal|confidential|secret
    owner_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    publish_from: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    publish_until: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DatasetFile(Base):
    """One file of one version of a dataset (a single-file dataset has one, path = its file name)."""

    __tablename__ = "dataset_files"
    __table_args__ = (UniqueConstraint("dataset_id", "version", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    media_type: Mapped[str] = mapped_column(String(128), default="application/octet-stream")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DatasetGrant(Base):
    __tablename__ = "dataset_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    subject_kind: Mapped[str] = mapped_column(String(8))  # user | group
    subject: Mapped[str] = mapped_column(String(64), index=True)
    mode: Mapped[str] = mapped_column(String(32))  # view | download | download-with-approval
    valid_until: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    max_downloads: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    min_level: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    mask: Mapped[str] = mapped_column(String(16), default="none")  # none | pii
    watermark: Mapped[bool] = mapped_column(Boolean, default=True)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DownloadRequest(Base):
    """A user's request to download under a download-with-approval grant, and its decision."""

    __tablename__ = "download_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("dataset_grants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="requested")  # requested|approved|refused|used
    reason: Mapped[str] = mapped_column(String(512), default="")
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)


class DownloadCopy(Base):
    """One counted download of a dataset by a user: one copy of one version, each file at most once, every
    file started before `expires_at` (publish.download_minutes after the first)."""

    __tablename__ = "download_copies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("dataset_grants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # the approval it used, if any
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DownloadCopyFile(Base):
    """A file already served under a copy (the key makes a second serving of it under that copy impossible)."""

    __tablename__ = "download_copy_files"

    copy_id: Mapped[int] = mapped_column(ForeignKey("download_copies.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("dataset_files.id", ondelete="CASCADE"), primary_key=True,
                                         index=True)


class DailyUsage(Base):
    """Per-user, per-day counters for the bulk limits (rows viewed, bytes downloaded)."""

    __tablename__ = "daily_usage"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD (UTC)
    rows_viewed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_downloaded: Mapped[int] = mapped_column(BigInteger, default=0)


class PolicySetting(Base):
    """A global policy setting an admin changed at runtime; it wins over bastion.toml and BASTION_* until reset."""

    __tablename__ = "policy_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON of the validated value
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class GroupPolicy(Base):
    """Settings that apply to every member of a group (groups themselves live on users)."""

    __tablename__ = "group_policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_policy: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)


class Device(Base):
    """An enrolled endpoint of a user: MAC addresses, a device SSH key, an mTLS certificate."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | revoked
    macs: Mapped[list[str]] = mapped_column(JSON, default=list)
    ssh_public_key: Mapped[str] = mapped_column(Text, default="")
    ssh_fingerprint: Mapped[str] = mapped_column(String(128), default="", index=True)
    cert_fingerprint: Mapped[str] = mapped_column(String(128), default="", index=True)
    cert_serial: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    approved_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    last_seen_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)


class Recording(Base):
    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), unique=True)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | sealed | truncated | failed
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)
    shredded_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(String(64), default="")
    target: Mapped[str] = mapped_column(String(128), default="")
    session_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="")
    node: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row that serialises appends to the audit chain across processes and nodes."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))
