"""Search entries at rest: AES-256-GCM under a per-session index key that the vault wraps."""

# An entry is `b"\x01" | 12-byte nonce | ciphertext+tag`; its associated data binds it to its session,
# kind and offset, so a row moved to another session, kind or time does not open. A command entry
# holds the command (UTF-8); an output entry holds a block of lines, JSON `[[offset, text], ...]`
# of at most BLOCK_BYTES, so a session's output costs tens of rows, not thousands.

from __future__ import annotations

import json
import os
from typing import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.search.extract import Found

KEY_BYTES = 32
BLOCK_BYTES = 4096
_VERSION = b"\x01"
_NONCE = 12
COMMAND, OUTPUT = "command", "output"


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_context(session_id: str) -> bytes:
    """What the vault binds a session's wrapped index key to."""
    return b"index:" + session_id.encode()


def _aad(session_id: str, kind: str, offset: float) -> bytes:
    return f"bastion-search:{session_id}:{kind}:{offset:.3f}".encode()


def seal(key: bytes, session_id: str, kind: str, offset: float, plaintext: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(session_id, kind, offset))


def open_sealed(key: bytes, session_id: str, kind: str, offset: float, sealed: bytes) -> bytes | None:
    """The plaintext, or None when the entry is malformed or was altered or moved."""
    if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
        return None
    try:
        return AESGCM(key).decrypt(sealed[1:1 + _NONCE], sealed[1 + _NONCE:], _aad(session_id, kind, offset))
    except InvalidTag:
        return None


def output_blocks(lines: Iterable[Found]) -> list[tuple[float, bytes]]:
    """Output lines grouped into blocks of at most BLOCK_BYTES: (offset of the first line, plaintext)."""
    blocks: list[tuple[float, bytes]] = []
    current: list[list] = []
    size = 2
    for line in lines:
        item = [line.offset, line.text]
        item_size = len(json.dumps(item, ensure_ascii=False).encode()) + 1
        if current and size + item_size > BLOCK_BYTES:
            blocks.append(_block(current))
            current, size = [], 2
        current.append(item)
        size += item_size
    if current:
        blocks.append(_block(current))
    return blocks


def _block(items: list[list]) -> tuple[float, bytes]:
    return items[0][0], json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()


def block_lines(plaintext: bytes) -> list[Found]:
    """The lines of an output block; anything malformed in it is skipped."""
    try:
        items = json.loads(plaintext)
    except (ValueError, RecursionError):
        return []
    if not isinstance(items, list):
        return []
    return [Found(float(item[0]), item[1]) for item in items
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], (int, float))
            and not isinstance(item[0], bool) and isinstance(item[1], str)]
