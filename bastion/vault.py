"""Master key and envelope encryption (AES-256-GCM data keys wrapped by the master key)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.errors import VaultError

MASTER_KEY_FILE = "master.key"
_VERSION = b"\x01"
_NONCE = 12
_KEY = 32
_WRAPPED = _NONCE + _KEY + 16


def create_master_key(keys_dir: Path) -> Path:
    """Write a new random master key readable by the owner only; never overwrite one."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    from bastion.privatefiles import write_private

    return write_private(keys_dir / MASTER_KEY_FILE, os.urandom(_KEY))


def check_private_file(path: Path) -> None:
    """Refuse a key file that anyone but its owner can read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VaultError(f"key file missing: {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultError(f"refusing to use {path}: it is accessible by group or others (chmod 600 it)")


class Vault:
    """Seals and opens secrets; each secret gets its own data key, wrapped by the master key."""

    def __init__(self, master_key: bytes):
        if len(master_key) != _KEY:
            raise VaultError("master key has the wrong length")
        self._master = AESGCM(master_key)

    @classmethod
    def load(cls, keys_dir: Path) -> "Vault":
        path = keys_dir / MASTER_KEY_FILE
        check_private_file(path)
        return cls(path.read_bytes())

    def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        """Encrypt a data key under the master key, bound to `context`."""
        nonce = os.urandom(_NONCE)
        return nonce + self._master.encrypt(nonce, data_key, b"bastion-wrap:" + context)

    def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        if len(wrapped) != _WRAPPED:
            raise VaultError("sealed key is malformed")
        try:
            return self._master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], b"bastion-wrap:" + context)
        except InvalidTag:
            raise VaultError("sealed key does not open with this master key") from None

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Envelope-encrypt `plaintext`; `context` (e.g. "account:web01:root") must match on open."""
        aad = context.encode()
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        body = AESGCM(data_key).encrypt(nonce, plaintext, aad)
        return _VERSION + self.wrap_key(data_key, aad) + nonce + body

    def open(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < 1 + _WRAPPED + _NONCE + 16 or sealed[:1] != _VERSION:
            raise VaultError("sealed secret is malformed")
        aad = context.encode()
        data_key = self.unwrap_key(sealed[1:1 + _WRAPPED], aad)
        nonce = sealed[1 + _WRAPPED:1 + _WRAPPED + _NONCE]
        try:
            return AESGCM(data_key).decrypt(nonce, sealed[1 + _WRAPPED + _NONCE:], aad)
        except InvalidTag:
            raise VaultError("sealed secret failed authentication") from None
