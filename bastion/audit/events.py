"""Typed audit events; each names its type and carries no secrets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

_COMMON = ("actor", "source", "target", "session_id", "outcome")


@dataclass(frozen=True, kw_only=True)
class Event:
    """Fields every event has; subclasses add their own, which become `details`."""

    type: ClassVar[str] = "event"
    actor: str = ""
    source: str = ""
    target: str = ""
    session_id: str = ""
    outcome: str = "success"

    @property
    def event_type(self) -> str:
        return self.type

    def details(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _COMMON}


@dataclass(frozen=True, kw_only=True)
class AuthSuccess(Event):
    type: ClassVar[str] = "auth.success"
    method: str
    level: int
    methods: tuple[str, ...] = ()
    device: str = ""
    device_proof: str = ""


@dataclass(frozen=True, kw_only=True)
class AuthPartial(Event):
    """A factor was accepted and the demanded level needs more."""

    type: ClassVar[str] = "auth.partial"
    outcome: str = "partial"
    method: str
    level: int
    required_level: int


@dataclass(frozen=True, kw_only=True)
class AuthFailure(Event):
    type: ClassVar[str] = "auth.failure"
    outcome: str = "failure"
    method: str
    reason: str
    level: int = 0
    device: str = ""


@dataclass(frozen=True, kw_only=True)
class AuthLockout(Event):
    type: ClassVar[str] = "auth.lockout"
    outcome: str = "locked"
    threshold: int


@dataclass(frozen=True, kw_only=True)
class StepUp(Event):
    """A logged-in session raised its level for a target (in-band TOTP, or later a browser approval)."""

    type: ClassVar[str] = "auth.stepup"
    method: str
    level: int


@dataclass(frozen=True, kw_only=True)
class SessionStart(Event):
    type: ClassVar[str] = "session.start"
    kind: str
    account: str
    command: str = ""
    level: int = 1
    methods: tuple[str, ...] = ()
    connection_id: str = ""
    grant_id: int | None = None
    device: str = ""
    device_proof: str = ""


@dataclass(frozen=True, kw_only=True)
class SessionDenied(Event):
    type: ClassVar[str] = "session.denied"
    outcome: str = "denied"
    kind: str
    reason: str
    account: str = ""


@dataclass(frozen=True, kw_only=True)
class DeviceAdvisory(Event):
    """Device policy is advisory and the connection proved no approved device: allowed, and noted."""

    type: ClassVar[str] = "device.advisory"
    outcome: str = "allowed"
    mac: str = ""


@dataclass(frozen=True, kw_only=True)
class SessionEnd(Event):
    type: ClassVar[str] = "session.end"
    reason: str
    bytes_up: int = 0
    bytes_down: int = 0
    exit_status: int | None = None
    duration: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Transfer(Event):
    type: ClassVar[str] = "transfer"
    protocol: str
    direction: str  # upload | download
    path: str
    size: int


@dataclass(frozen=True, kw_only=True)
class TransferDenied(Event):
    type: ClassVar[str] = "transfer.denied"
    outcome: str = "denied"
    protocol: str
    operation: str
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class Forward(Event):
    type: ClassVar[str] = "forward"
    dest_host: str
    dest_port: int


@dataclass(frozen=True, kw_only=True)
class ProxyJump(Event):
    """A ProxyJump hop accepted: the inner connection (its sessions carry `connection_id`) inside the outer."""

    type: ClassVar[str] = "proxyjump"
    account: str
    outer_connection_id: str
    connection_id: str


@dataclass(frozen=True, kw_only=True)
class ForwardDenied(Event):
    type: ClassVar[str] = "forward.denied"
    outcome: str = "denied"
    kind: str
    dest_host: str = ""
    dest_port: int = 0


@dataclass(frozen=True, kw_only=True)
class HostKeyMismatch(Event):
    type: ClassVar[str] = "hostkey.mismatch"
    outcome: str = "failure"
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class UpstreamFailure(Event):
    type: ClassVar[str] = "upstream.failure"
    outcome: str = "failure"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RecordingFailure(Event):
    type: ClassVar[str] = "recording.failure"
    outcome: str = "failure"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RecordingRead(Event):
    type: ClassVar[str] = "recording.read"
    purpose: str  # export | replay


@dataclass(frozen=True, kw_only=True)
class AuditRead(Event):
    """Somebody read the audit log (listing, search, export or verification)."""

    type: ClassVar[str] = "audit.read"
    purpose: str
    query: str = ""
    rows: int = 0


@dataclass(frozen=True, kw_only=True)
class AdminChange(Event):
    """An administrative change; `action` names it (e.g. "user.add") and becomes the event type."""

    action: str
    object: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    @property
    def event_type(self) -> str:
        return f"admin.{self.action}"


@dataclass(frozen=True, kw_only=True)
class ConnectionRefused(Event):
    type: ClassVar[str] = "connection.refused"
    outcome: str = "refused"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RecordingShredded(Event):
    """A recording past its retention was crypto-shredded: its wrapped data key destroyed, its file removed."""

    type: ClassVar[str] = "recording.shredded"
    recording_id: str
    ended_at: str
    retention_days: int
    file: str  # destroyed | missing


@dataclass(frozen=True, kw_only=True)
class BackupCreated(Event):
    type: ClassVar[str] = "backup.created"
    file: str
    size: int
    sha256: str
    rows: int
    files: int
    missing: int = 0


@dataclass(frozen=True, kw_only=True)
class BackupRestored(Event):
    """The first event of a data directory restored from a backup (written in the restored chain)."""

    type: ClassVar[str] = "backup.restored"
    backup_created: str
    backup_node: str
    rows: int
    files: int


@dataclass(frozen=True, kw_only=True)
class DatasetChange(AdminChange):
    """A change to the dataset catalog; `action` is e.g. "dataset.add", so the type is "admin.dataset.add"."""


@dataclass(frozen=True, kw_only=True)
class DatasetView(Event):
    """A rendered view of one page of a dataset file; `view_id` is the one burned into its watermark."""

    type: ClassVar[str] = "dataset.view"
    dataset: str
    version: int
    path: str
    kind: str
    page: int
    rows: int
    view_id: str
    grant_id: int
    mask: str
    watermark: bool
    level: int = 0


@dataclass(frozen=True, kw_only=True)
class DatasetDownloadStopped(Event):
    """An open download cut off by a re-check: grant revoked or expired, dataset unpublished, user disabled."""

    type: ClassVar[str] = "dataset.download.stopped"
    dataset: str
    path: str
    download_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class DatasetDownload(Event):
    """A download about to be streamed: its size and the SHA-256 of exactly the plaintext served."""

    type: ClassVar[str] = "dataset.download"
    dataset: str
    version: int
    path: str
    size: int
    sha256: str
    grant_id: int
    request_id: int | None = None
    download_id: str = ""
    downloads: int = 0
    copy_id: int = 0  # the counted download (one copy of the version) this file is served under
    level: int = 0


@dataclass(frozen=True, kw_only=True)
class QuotaExceeded(Event):
    """Alert: a user reached or passed a daily bulk limit (rows viewed, bytes downloaded)."""

    type: ClassVar[str] = "alert.quota"
    outcome: str = "refused"
    limit_kind: str  # rows | bytes
    limit: int
    used: int
    requested: int
    day: str


@dataclass(frozen=True, kw_only=True)
class DownloadRequested(Event):
    type: ClassVar[str] = "dataset.request"
    request_id: int
    grant_id: int


@dataclass(frozen=True, kw_only=True)
class DownloadDecided(Event):
    type: ClassVar[str] = "dataset.decide"
    request_id: int
    user: str
    decision: str  # approved | refused
    reason: str
    expires_at: str | None = None
