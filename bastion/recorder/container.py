"""Container format v1 for recordings: framing, hashing, encryption and signing of the parts.

A recording file (``<recordings_dir>/YYYY/MM/DD/<session_id>.bcast``, mode 0600) is::

    preamble   b"BASTCAST\\x01" | u32 n | n bytes UTF-8 JSON
                 {"format": 1, "session_id", "created" (ISO 8601), "node",
                  "cipher": "AES-256-GCM",
                  "wrapped_key": base64(Vault.wrap_key(data_key, b"recording:" + session_id))}
    record*    u32 n | n bytes = 1 type byte + payload        (1 <= n <= MAX_RECORD)

      b"C" chunk      u64 seq | 32-byte prev_hash | 12-byte nonce | AES-256-GCM ciphertext + tag
                        key       = the per-session 32-byte data key
                        AAD       = session_id (UTF-8) | u64 seq | prev_hash
                        plaintext = zlib (level 1) of UTF-8 asciicast v2 lines, each ending in "\\n";
                                    chunk 0 starts with the header line; a chunk never splits a line
                        prev_hash = sha256(preamble bytes) for chunk 0, else the previous chunk's hash
                        hash      = sha256(type byte + payload)
      b"M" manifest   u32 m | m bytes UTF-8 JSON
                        {"session_id", "chunks", "last_hash" (hex), "duration", "status",
                         "end_reason", "closed_at"}
                      | 64-byte Ed25519 signature by the node key over exactly those m JSON bytes.
                      Written once, as the last record.  status is "sealed", or "failed" when the
                      writer could still seal the file after a write error.

All integers are big-endian.  Why each part:
- seq and prev_hash make removed, reordered and duplicated chunks visible without any key;
- the signed manifest anchors the end of the chain (a chopped tail shows as a missing manifest);
- AES-GCM with the position in the AAD authenticates each chunk's content where it stands, so a
  reader holding the vault names the exact chunk that was altered;
- nothing of the session (not even the terminal title) is in the preamble, only in chunks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from bastion.errors import RecordingError

MAGIC = b"BASTCAST\x01"
FORMAT = 1
CIPHER = "AES-256-GCM"
SUFFIX = ".bcast"

CHUNK = b"C"
MANIFEST = b"M"

MAX_PREAMBLE_JSON = 64 * 1024
# A chunk holds at most MAX_CHUNK_PLAIN bytes of lines (plus one event line); compressed and
# encrypted it stays far below MAX_RECORD, so any bigger length field is corruption, not data.
MAX_RECORD = 16 * 1024 * 1024
MAX_CHUNK_PLAIN = 8 * 1024 * 1024
MAX_DECOMPRESSED = 16 * 1024 * 1024

HASH_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SIGNATURE_SIZE = 64
_CHUNK_HEAD = struct.Struct(">Q32s12s")
MIN_CHUNK_PAYLOAD = _CHUNK_HEAD.size + TAG_SIZE
_U32 = struct.Struct(">I")

# Session ids become file names: keep them to what a UUID or a simple token needs.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ContainerError(RecordingError):
    """The bytes do not follow the container format (the message says where and how)."""


class TruncatedRecord(ContainerError):
    """The file ends inside a record: the writer was cut off mid-write."""

    def __init__(self, message: str, record_type: bytes | None):
        super().__init__(message)
        self.record_type = record_type


@dataclass(frozen=True)
class Preamble:
    """The clear-text head of a recording: who and when, and the wrapped data key."""

    session_id: str
    created: str
    node: str
    wrapped_key: bytes
    raw: bytes  # the exact preamble bytes; chunk 0 links to their hash

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


@dataclass(frozen=True)
class Record:
    """One framed record as read from a file."""

    type: bytes
    payload: bytes
    offset: int  # where its length field starts
    size: int  # bytes on disk, length field included


@dataclass(frozen=True)
class ChunkFields:
    seq: int
    prev_hash: bytes
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest record; `signed_json` is what the signature covers."""

    signed_json: bytes
    signature: bytes
    fields: dict


def key_context(session_id: str) -> bytes:
    """The vault context a recording's data key is wrapped under."""
    return b"recording:" + session_id.encode()


def encode_preamble(session_id: str, created: str, node: str, wrapped_key: bytes) -> bytes:
    body = json.dumps({
        "format": FORMAT, "session_id": session_id, "created": created, "node": node,
        "cipher": CIPHER, "wrapped_key": base64.b64encode(wrapped_key).decode("ascii"),
    }, separators=(",", ":"), ensure_ascii=False).encode()
    return MAGIC + _U32.pack(len(body)) + body


def read_preamble(stream: BinaryIO) -> Preamble:
    """Parse the preamble at the start of `stream`; raise ContainerError saying what is wrong."""
    head = stream.read(len(MAGIC) + _U32.size)
    if not head:
        raise ContainerError("empty file: not a Bastion recording")
    name = MAGIC[:-1]  # b"BASTCAST"; the byte after it is the container version
    if head[:len(name)] != name[:len(head)]:
        raise ContainerError("not a Bastion recording (bad magic)")
    if len(head) > len(name) and head[len(name)] != MAGIC[-1]:
        raise ContainerError(f"unsupported recording container version {head[len(name)]}")
    if len(head) < len(MAGIC) + _U32.size:
        raise ContainerError("preamble is cut short")
    (length,) = _U32.unpack_from(head, len(MAGIC))
    if length > MAX_PREAMBLE_JSON:
        raise ContainerError(f"preamble length {length} exceeds the limit of {MAX_PREAMBLE_JSON} bytes")
    body = stream.read(length)
    if len(body) < length:
        raise ContainerError("preamble is cut short")
    try:
        meta = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ContainerError("preamble is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ContainerError("preamble is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ContainerError(f"unsupported recording format {str(meta.get('format'))[:20]!r}")
    if meta.get("cipher") != CIPHER:
        raise ContainerError(f"unsupported cipher {str(meta.get('cipher'))[:40]!r}")
    session_id = meta.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise ContainerError("preamble has no valid session id")
    created, node = meta.get("created"), meta.get("node")
    if not isinstance(created, str) or not isinstance(node, str):
        raise ContainerError("preamble lacks its creation time or node")
    try:
        wrapped_key = base64.b64decode(meta.get("wrapped_key", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ContainerError("preamble has a malformed wrapped key") from None
    return Preamble(session_id, created, node, wrapped_key, head + body)


def frame(record_type: bytes, payload: bytes) -> bytes:
    """Length-prefix one record."""
    return _U32.pack(1 + len(payload)) + record_type + payload


def read_records(stream: BinaryIO, offset: int, file_size: int | None = None) -> Iterator[Record]:
    """Yield records until a clean end of file.

    Raises TruncatedRecord when the file ends inside a record, ContainerError when a length
    field cannot be right.  Memory stays bounded by MAX_RECORD, and with `file_size` a length
    that runs past the end is caught before anything that large is read.
    """
    while True:
        head = stream.read(_U32.size)
        if not head:
            return
        if len(head) < _U32.size:
            raise TruncatedRecord(f"file ends inside a record length at byte {offset}", None)
        (length,) = _U32.unpack(head)
        if length < 1 or length > MAX_RECORD:
            raise ContainerError(f"record at byte {offset} claims {length} bytes "
                                 f"(limit {MAX_RECORD}): the length field is corrupt")
        present = None if file_size is None else max(0, file_size - offset - _U32.size)
        if present is not None and length > present:
            body = stream.read(min(present, 1))
        else:
            body = stream.read(length)
        if len(body) < length:
            raise TruncatedRecord(f"file ends inside a record at byte {offset} "
                                  f"({present if present is not None else len(body)} of {length} bytes present)",
                                  body[:1] or None)
        yield Record(body[:1], body[1:], offset, _U32.size + length)
        offset += _U32.size + length


def record_hash(record_type: bytes, *payload: bytes) -> bytes:
    """The chain hash of a record whose payload is the pieces of `payload`, in order."""
    digest = hashlib.sha256(record_type)
    for piece in payload:
        digest.update(piece)  # not record_type + payload: that copies every chunk once more
    return digest.digest()


def chunk_aad(session_id: str, seq: int, prev_hash: bytes) -> bytes:
    return session_id.encode() + seq.to_bytes(8, "big") + prev_hash


def encode_chunk_payload(seq: int, prev_hash: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    return _CHUNK_HEAD.pack(seq, prev_hash, nonce) + ciphertext


def chunk_record(seq: int, prev_hash: bytes, nonce: bytes, ciphertext: bytes) -> tuple[list[bytes], bytes]:
    """A framed chunk record as pieces to write in order, and its hash: the same bytes and hash as
    `frame(CHUNK, encode_chunk_payload(...))` and `record_hash`, without copying the ciphertext twice."""
    head = _CHUNK_HEAD.pack(seq, prev_hash, nonce)
    return ([_U32.pack(1 + len(head) + len(ciphertext)) + CHUNK + head, ciphertext],
            record_hash(CHUNK, head, ciphertext))


def parse_chunk(payload: bytes) -> ChunkFields:
    if len(payload) < MIN_CHUNK_PAYLOAD:
        raise ContainerError(f"chunk is {len(payload)} bytes, shorter than any valid chunk")
    seq, prev_hash, nonce = _CHUNK_HEAD.unpack_from(payload)
    return ChunkFields(seq, prev_hash, nonce, payload[_CHUNK_HEAD.size:])


def encode_manifest_payload(signed_json: bytes, signature: bytes) -> bytes:
    return _U32.pack(len(signed_json)) + signed_json + signature


MANIFEST_FIELDS = {"session_id": str, "chunks": int, "last_hash": str, "duration": (int, float),
                   "status": str, "end_reason": str, "closed_at": str}


def parse_manifest(payload: bytes) -> Manifest:
    """Split a manifest record; the signature is checked by the caller, before trusting fields."""
    if len(payload) < _U32.size + SIGNATURE_SIZE:
        raise ContainerError("manifest is too short")
    (length,) = _U32.unpack_from(payload)
    if _U32.size + length + SIGNATURE_SIZE != len(payload):
        raise ContainerError("manifest length fields disagree")
    signed_json = payload[_U32.size:_U32.size + length]
    signature = payload[_U32.size + length:]
    try:
        fields = json.loads(signed_json.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        fields = None
    return Manifest(signed_json, signature, fields if isinstance(fields, dict) else {})


def manifest_problem(fields: dict) -> str | None:
    """What is missing or mistyped in signed manifest fields, or None."""
    for name, kind in MANIFEST_FIELDS.items():
        value = fields.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"manifest field {name!r} is missing or malformed"
    if fields["chunks"] < 0 or not re.fullmatch(r"[0-9a-f]{64}", fields["last_hash"]):
        return "manifest chunk count or last hash is malformed"
    if fields["status"] not in ("sealed", "failed"):
        return "manifest status is unknown"
    return None
