"""Every kind of tampering is detected, named by chunk, refused by export, and marked when forced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.errors import RecordingError
from bastion.recorder import container
from bastion.recorder.export import export_cast
from bastion.recorder.reader import iter_lines, verify

from .containerfile import flip, join_file, output_text, read_cast, record_offsets, split_file

CHUNKS = 6


def event_text(index: int) -> str:
    return f"event-{index:03d}-" + "x" * 300 + "\r\n"


@pytest.fixture
async def sealed(env) -> Path:
    """A sealed recording whose chunk i holds exactly event i (each line outgrows a 256-byte chunk)."""
    store = env.store(recording__chunk_bytes=256)
    rec = await env.open(store)
    for index in range(CHUNKS):
        rec.output(event_text(index).encode())
    await rec.close("done")
    report = verify(rec.path, env.public_key)
    assert report.ok and report.chunks == CHUNKS
    return rec.path


def prefix_text(count: int) -> str:
    return "".join(event_text(i) for i in range(count))


def remove_chunk(path: Path, index: int) -> None:
    preamble, records = split_file(path)
    del records[index]
    join_file(path, preamble, records)


def swap_chunks(path: Path, index: int) -> None:
    preamble, records = split_file(path)
    records[index], records[index + 1] = records[index + 1], records[index]
    join_file(path, preamble, records)


def duplicate_chunk(path: Path, index: int) -> None:
    preamble, records = split_file(path)
    records.insert(index + 1, records[index])
    join_file(path, preamble, records)


def flip_in_chunk(path: Path, index: int, field_offset: int) -> None:
    """Flip one bit at `field_offset` inside chunk `index`'s payload (0 = first byte of seq)."""
    offset, _, kind = record_offsets(path)[index]
    assert kind == container.CHUNK
    data = path.read_bytes()
    path.write_bytes(flip(data, offset + 5 + field_offset))


SEQ, PREV_HASH, NONCE, CIPHERTEXT = 7, 8 + 5, 8 + 32 + 3, 8 + 32 + 12 + 20


def edit_manifest(path: Path, change, *, key: Ed25519PrivateKey | None = None) -> None:
    """Rewrite the manifest JSON with `change`; re-sign with `key` if given, else keep the old signature."""
    preamble, records = split_file(path)
    kind, payload = records[-1]
    assert kind == container.MANIFEST
    manifest = container.parse_manifest(payload)
    fields = dict(manifest.fields)
    change(fields)
    body = json.dumps(fields, separators=(",", ":")).encode()
    signature = key.sign(body) if key is not None else manifest.signature
    records[-1] = (kind, container.encode_manifest_payload(body, signature))
    join_file(path, preamble, records)


def cut(path: Path, keep: int) -> None:
    with open(path, "r+b") as stream:
        stream.truncate(keep)


def last_chunk_middle(path: Path) -> int:
    offset, size, _ = record_offsets(path)[CHUNKS - 1]
    return offset + size // 2


def manifest_middle(path: Path) -> int:
    offset, size, kind = record_offsets(path)[-1]
    assert kind == container.MANIFEST
    return offset + size // 2


def edit_preamble_node(path: Path) -> None:
    data = path.read_bytes()
    assert data.count(b'"node-test"') == 1
    path.write_bytes(data.replace(b'"node-test"', b'"node-evil"'))


# (name, tamper, status, first_bad_chunk, verified prefix, words in the reason)
CASES = [
    ("flipped ciphertext byte", lambda p: flip_in_chunk(p, 2, CIPHERTEXT), "corrupt", 2, 2, "altered"),
    ("flipped nonce byte", lambda p: flip_in_chunk(p, 3, NONCE), "corrupt", 3, 3, "altered"),
    ("flipped link byte", lambda p: flip_in_chunk(p, 3, PREV_HASH), "corrupt", 3, 3, "altered"),
    ("flipped sequence byte", lambda p: flip_in_chunk(p, 2, SEQ), "corrupt", 2, 2, "out of order"),
    ("flipped byte in the last chunk", lambda p: flip_in_chunk(p, CHUNKS - 1, CIPHERTEXT), "corrupt",
     CHUNKS - 1, CHUNKS - 1, "altered"),
    ("removed chunk", lambda p: remove_chunk(p, 2), "corrupt", 2, 2, "missing"),
    ("removed first chunk", lambda p: remove_chunk(p, 0), "corrupt", 0, 0, "missing"),
    ("removed last chunk", lambda p: remove_chunk(p, CHUNKS - 1), "corrupt", CHUNKS - 1, CHUNKS - 1, "missing"),
    ("reordered chunks", lambda p: swap_chunks(p, 2), "corrupt", 2, 2, "out of order"),
    ("duplicated chunk", lambda p: duplicate_chunk(p, 2), "corrupt", 3, 3, "appears again"),
    ("tail cut inside the last chunk", lambda p: cut(p, last_chunk_middle(p)), "truncated",
     CHUNKS - 1, CHUNKS - 1, "cut off"),
    ("tail cut inside the manifest", lambda p: cut(p, manifest_middle(p)), "truncated", None, CHUNKS, "manifest"),
    ("manifest removed", lambda p: remove_chunk(p, CHUNKS), "unsealed", None, CHUNKS, "no manifest"),
    ("manifest signed by another key",
     lambda p: edit_manifest(p, lambda f: None, key=Ed25519PrivateKey.generate()), "corrupt", None, CHUNKS,
     "signature"),
    ("manifest edited", lambda p: edit_manifest(p, lambda f: f.update(duration=f["duration"] + 3600)),
     "corrupt", None, CHUNKS, "signature"),
    ("manifest chunk count edited", lambda p: edit_manifest(p, lambda f: f.update(chunks=CHUNKS - 1)),
     "corrupt", None, CHUNKS, "signature"),
    ("preamble edited", edit_preamble_node, "corrupt", None, 0, "preamble"),
    ("data after the manifest", lambda p: p.write_bytes(p.read_bytes() + container.frame(b"C", b"\0" * 80)),
     "corrupt", None, CHUNKS, "follows the manifest"),
]


@pytest.mark.parametrize("name, tamper, status, bad, prefix, words", CASES, ids=[c[0] for c in CASES])
async def test_tampering_is_named_refused_and_marked(env, sealed, tmp_path, name, tamper, status, bad, prefix,
                                                     words):
    tampered = tmp_path / "tampered.bcast"
    shutil.copy(sealed, tampered)
    tamper(tampered)

    for report in (verify(tampered, env.public_key), verify(tampered, env.public_key, vault=env.vault)):
        assert not report.ok
        assert report.status == status, report
        assert report.first_bad_chunk == bad, report
        assert report.chunks == prefix, report
        assert words in report.reason, report
        if bad is not None:
            assert f"chunk {bad}" in report.describe()

    with pytest.raises(RecordingError) as refused:
        export_cast(tampered, tmp_path / "refused.cast", env.vault, env.public_key)
    assert (f"chunk {bad}" if bad is not None else words) in refused.value.safe_message
    assert not (tmp_path / "refused.cast").exists()
    with pytest.raises(RecordingError):
        list(iter_lines(tampered, env.vault, env.public_key))

    forced = tmp_path / "forced.cast"
    export_cast(tampered, forced, env.vault, env.public_key, force=True)
    header, events = read_cast(forced)
    assert header["version"] == 2 and header["bastion_verification"].startswith("FAILED: ")
    assert words in header["bastion_verification"]
    assert events[-1][1] == "m" and "FAILED" in events[-1][2]
    assert output_text(events) == prefix_text(prefix)
    assert list(iter_lines(tampered, env.vault, env.public_key, force=True))[1:] == \
        [json.dumps(e, ensure_ascii=False) for e in events[:-1]]


async def test_the_untouched_file_verifies_and_exports(env, sealed, tmp_path):
    out = tmp_path / "clean.cast"
    assert export_cast(sealed, out, env.vault, env.public_key).ok
    header, events = read_cast(out)
    assert "bastion_verification" not in header and output_text(events) == prefix_text(CHUNKS)


async def test_verification_needs_only_the_public_key_and_decryption_the_right_vault(env, sealed, tmp_path):
    from bastion.vault import Vault

    assert verify(sealed, env.public_key).ok  # no vault anywhere
    assert not verify(sealed, Ed25519PrivateKey.generate().public_key()).ok
    other_vault = Vault(b"\x07" * 32)
    with pytest.raises(RecordingError, match="does not open with this vault"):
        list(iter_lines(sealed, other_vault, env.public_key))
    with pytest.raises(RecordingError, match="does not open with this vault"):
        export_cast(sealed, tmp_path / "x.cast", other_vault, env.public_key)


async def test_a_chunk_moved_from_another_recording_is_rejected(env, tmp_path):
    store = env.store(recording__chunk_bytes=256)
    paths = []
    for _ in range(2):
        rec = await env.open(store)
        for index in range(3):
            rec.output(event_text(index).encode())
        await rec.close("done")
        paths.append(rec.path)
    preamble, records = split_file(paths[0])
    _, foreign = split_file(paths[1])
    records[1] = foreign[1]
    join_file(paths[0], preamble, records)
    report = verify(paths[0], env.public_key, vault=env.vault)
    assert not report.ok and report.first_bad_chunk == 1
