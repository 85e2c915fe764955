"""Device binding: which approved device of a user a connection comes from (MAC on-link, or device key)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.clock import Clock
from bastion.store.models import Device

POLICIES = ("off", "advisory", "required")
PROOF_MAC = "mac"
PROOF_KEY = "device-key"
PROOF_CERT = "client-cert"


def strongest(*policies: str | None) -> str:
    """The strictest of several device policies (None means "not set here")."""
    given = [p for p in policies if p in POLICIES]
    return max(given, key=POLICIES.index) if given else "off"


@dataclass(frozen=True)
class DeviceFacts:
    id: int
    name: str
    status: str
    macs: tuple[str, ...]
    ssh_fingerprint: str
    cert_fingerprint: str

    @property
    def approved(self) -> bool:
        return self.status == "approved"


@dataclass(frozen=True)
class DeviceMatch:
    """The device a connection proved, and how."""

    device_id: int
    name: str
    proof: str


class DeviceDirectory:
    """Reads a user's devices and records when they were last seen."""

    def __init__(self, sessionmaker: async_sessionmaker, clock: Clock):
        self._sessionmaker = sessionmaker
        self._clock = clock

    async def for_user(self, user_id: int) -> tuple[DeviceFacts, ...]:
        async with self._sessionmaker() as db:
            rows = (await db.execute(select(Device).where(Device.user_id == user_id))).scalars().all()
        return tuple(DeviceFacts(d.id, d.name, d.status, tuple(d.macs or ()), d.ssh_fingerprint, d.cert_fingerprint)
                     for d in rows)

    async def seen(self, device_id: int) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(Device).where(Device.id == device_id).values(last_seen_at=self._clock.now()))


def match_mac(devices: tuple[DeviceFacts, ...], mac: str | None) -> DeviceMatch | None:
    if not mac:
        return None
    for device in devices:
        if device.approved and mac in device.macs:
            return DeviceMatch(device.id, device.name, PROOF_MAC)
    return None


def match_key(devices: tuple[DeviceFacts, ...], fingerprint: str) -> DeviceMatch | None:
    for device in devices:
        if device.approved and device.ssh_fingerprint and device.ssh_fingerprint == fingerprint:
            return DeviceMatch(device.id, device.name, PROOF_KEY)
    return None
