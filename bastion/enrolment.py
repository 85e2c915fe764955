"""Enrolment of second factors and devices: TOTP secrets, device keys, MACs and client certificates."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from bastion.admin import Admin, parse_user_key
from bastion.auth import totp
from bastion.auth.flow import totp_context
from bastion.auth.neighbours import normalise_mac
from bastion.errors import Conflict, NotFound, UsageError
from bastion.pki import issue_device_certificate
from bastion.store.models import Credential, Device, User

DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Enrolment(Admin):
    """TOTP and device administration (same actor, audit and store as Admin)."""

    # TOTP ------------------------------------------------------------------------------------------------

    async def enroll_totp(self, name: str, issuer: str) -> dict[str, str]:
        """Create a TOTP secret; returns the otpauth URI to show once (the secret is stored sealed)."""
        secret = totp.new_secret()
        async with self.sessionmaker() as db, db.begin():
            user = await self._user(db, name)
            existing = (await db.execute(select(Credential).where(Credential.user_id == user.id,
                                                                  Credential.kind == "totp"))).first()
            if existing is not None:
                raise Conflict(f"{name} already has a TOTP secret; reset it first (bastion user totp reset)")
            db.add(Credential(user_id=user.id, kind="totp", secret=self.vault.seal(secret.encode(),
                                                                                  totp_context(user.id)),
                              counter=0, created_at=self.clock.now()))
        await self._audit("user.totp.enroll", name, None, {"totp": True})
        return {"user": name, "uri": totp.provisioning_uri(secret, name, issuer)}

    async def reset_totp(self, name: str) -> None:
        async with self.sessionmaker() as db, db.begin():
            user = await self._user(db, name)
            result = await db.execute(delete(Credential).where(Credential.user_id == user.id,
                                                               Credential.kind == "totp"))
            if result.rowcount == 0:
                raise NotFound(f"{name} has no TOTP secret")
        await self._audit("user.totp.reset", name, {"totp": True}, {"totp": False})

    # devices ---------------------------------------------------------------------------------------------

    async def add_device(self, user_name: str, device_name: str, macs: Iterable[str] = (),
                         ssh_key: str | None = None, keys_dir: Path | None = None,
                         issue_cert: bool = False) -> dict[str, Any]:
        if not DEVICE_NAME.fullmatch(device_name or ""):
            raise UsageError("invalid device name: use letters, digits, '.', '_' or '-'")
        try:
            mac_list = sorted({normalise_mac(m) for m in macs})
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        key = parse_user_key(ssh_key) if ssh_key else None
        if not (mac_list or key or issue_cert):
            raise UsageError("a device needs at least one of --mac, --ssh-key or --issue-cert")
        async with self.sessionmaker() as db:
            user = await self._user(db, user_name)
        issued = issue_device_certificate(keys_dir, user_name, device_name) if issue_cert and keys_dir else None
        async with self.sessionmaker() as db:
            try:
                async with db.begin():
                    device = Device(user_id=user.id, name=device_name, status="pending", macs=mac_list,
                                    ssh_public_key=key.export_public_key().decode().strip() if key else "",
                                    ssh_fingerprint=key.get_fingerprint("sha256") if key else "",
                                    cert_fingerprint=issued.fingerprint if issued else "",
                                    cert_serial=issued.serial if issued else "", created_at=self.clock.now())
                    db.add(device)
                    await db.flush()
                    device_id = device.id
            except IntegrityError:
                raise Conflict(f"{user_name} already has a device named {device_name}") from None
        after = {"id": device_id, "user": user_name, "name": device_name, "macs": mac_list,
                 "ssh_fingerprint": key.get_fingerprint("sha256") if key else "",
                 "cert_fingerprint": issued.fingerprint if issued else "", "status": "pending"}
        await self._audit("device.add", f"device:{device_id}", None, after)
        result: dict[str, Any] = dict(after)
        if issued is not None:
            result["p12"], result["p12_password"] = issued.p12, issued.password
            result["p12_base64"] = base64.b64encode(issued.p12).decode()
        return result

    async def set_device_status(self, device_id: int, status: str) -> dict[str, Any]:
        async with self.sessionmaker() as db, db.begin():
            device = await db.get(Device, device_id)
            if device is None:
                raise NotFound(f"no such device: {device_id}")
            before = device.status
            if before == "revoked":
                raise Conflict(f"device {device_id} is revoked; enrol it again")
            if before == status:
                raise Conflict(f"device {device_id} is already {status}")
            device.status = status
            now = self.clock.now()
            if status == "approved":
                device.approved_at = now
            else:
                device.revoked_at = now
        await self._audit(f"device.{'approve' if status == 'approved' else 'revoke'}", f"device:{device_id}",
                          {"status": before}, {"status": status})
        return {"id": device_id, "status": status}

    async def list_devices(self, user_name: str | None = None) -> list[dict[str, Any]]:
        async with self.sessionmaker() as db:
            query = select(Device, User.name).join(User, Device.user_id == User.id).order_by(Device.id)
            if user_name:
                query = query.where(User.name == user_name)
            rows = (await db.execute(query)).all()
        return [{"id": d.id, "user": user, "name": d.name, "status": d.status, "macs": list(d.macs),
                 "ssh_fingerprint": d.ssh_fingerprint, "cert_fingerprint": d.cert_fingerprint,
                 "created_at": d.created_at.isoformat(),
                 "last_seen_at": d.last_seen_at.isoformat() if d.last_seen_at else None} for d, user in rows]
