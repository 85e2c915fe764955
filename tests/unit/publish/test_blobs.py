"""The blob store: streamed round trips, range reads, dedupe, tamper detection per chunk, cut-off input."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat

import pytest
from sqlalchemy import select

from bastion.errors import VaultError
from bastion.publish import blobs
from bastion.publish.blobs import HEADER, TAG, BlobStore, blob_dir
from bastion.publish.errors import BlobError, InputError
from bastion.store.models import Blob

from .conftest import blob_files, counts

CHUNK = 4096


def store_for(services, chunk=CHUNK, max_bytes=None):
    return BlobStore(blob_dir(services.config), services.db, services.vault, services.clock,
                     max_bytes or services.config["publish.max_file_bytes"], chunk)


async def read_all(store, sha, offset=0, length=None) -> bytes:
    return b"".join([piece async for piece in store.iter(sha, offset, length)])


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
async def test_round_trip_of_every_size_at_chunk_edges(services, size, tmp_path):
    data = os.urandom(size)
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    store = store_for(services)
    sha, stored = await store.put(path)
    assert (sha, stored) == (hashlib.sha256(data).hexdigest(), size)
    assert await read_all(store, sha) == data
    file = store.path(sha)
    assert file.stat().st_size == HEADER.size + size + max(1, -(-size // CHUNK)) * TAG
    # Encrypted at rest (a plaintext shorter than 16 bytes may turn up in random ciphertext by chance).
    assert size < 16 or data[:64] not in file.read_bytes()


async def test_sources_path_file_object_async_iterator_and_aiohttp_style_reader(services, tmp_path):
    data = os.urandom(3 * CHUNK + 5)
    (tmp_path / "f").write_bytes(data)

    async def agen():
        for i in range(0, len(data), 1000):
            await asyncio.sleep(0)
            yield data[i:i + 1000]

    class BodyPart:  # aiohttp's BodyPartReader: read() would buffer everything, read_chunk() streams
        def __init__(self):
            self.stream = io.BytesIO(data)

        async def read(self):
            raise AssertionError("read() buffers the whole upload")

        async def read_chunk(self, size):
            return self.stream.read(min(size, 777))

    store = store_for(services)
    for source in (tmp_path / "f", str(tmp_path / "f"), io.BytesIO(data), agen(), BodyPart(), [data]):
        sha, size = await store.put(source)
        assert size == len(data) and await read_all(store, sha) == data


async def test_module_level_put_and_open_reader_with_ranges(services):
    data = bytes(range(256)) * 20_000  # 5 MB: several 1 MiB chunks
    sha, size = await blobs.put(services, io.BytesIO(data))
    assert size == len(data)
    got = b"".join([p async for p in blobs.open_reader(services, sha)])
    assert got == data
    for offset, length in ((0, 10), (1 << 20, 5), ((1 << 20) - 3, 7), (len(data) - 4, 100), (len(data), 10)):
        piece = b"".join([p async for p in blobs.open_reader(services, sha, offset, length)])
        assert piece == data[offset:offset + length]


async def test_reader_is_seekable_and_pread_crosses_chunks(services):
    data = os.urandom(10 * CHUNK)
    store = store_for(services)
    sha, _ = await store.put(io.BytesIO(data))
    reader = await store.open(sha)
    try:
        assert reader.pread(CHUNK - 10, 30) == data[CHUNK - 10:CHUNK + 20]
        reader.seek(3 * CHUNK + 1)
        assert reader.read(5) == data[3 * CHUNK + 1:3 * CHUNK + 6]
        assert reader.seek(0, io.SEEK_END) == len(data) and reader.read(1) == b""
        assert reader.pread(len(data) + 5, 10) == b""
    finally:
        reader.close()


async def test_identical_content_is_stored_once(services):
    store = store_for(services)
    data = os.urandom(2 * CHUNK)
    first = await store.put(io.BytesIO(data))
    before = blob_files(services)
    second = await store.put(io.BytesIO(data))
    assert first == second and blob_files(services) == before
    async with services.db() as db:
        assert len((await db.execute(select(Blob))).scalars().all()) == 1
    assert not list((blob_dir(services.config) / "tmp").iterdir())


async def test_files_are_private(services):
    store = store_for(services)
    sha, _ = await store.put(io.BytesIO(b"secret"))
    root = blob_dir(services.config)
    for path in (root, root / "tmp", root / sha[:2]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(store.path(sha).stat().st_mode) == 0o600


async def test_a_flipped_byte_is_caught_at_its_chunk(services):
    data = os.urandom(6 * CHUNK)
    store = store_for(services)
    sha, _ = await store.put(io.BytesIO(data))
    path = store.path(sha)
    raw = bytearray(path.read_bytes())
    raw[HEADER.size + 3 * (CHUNK + TAG) + 100] ^= 0x01
    path.write_bytes(raw)
    reader = await store.open(sha)
    try:
        assert reader.pread(0, 3 * CHUNK) == data[:3 * CHUNK]  # the chunks before it still read
        with pytest.raises(BlobError, match="chunk 3 failed authentication"):
            reader.pread(3 * CHUNK, 1)
        assert reader.pread(4 * CHUNK, CHUNK) == data[4 * CHUNK:5 * CHUNK]  # and those after it
    finally:
        reader.close()
    with pytest.raises(BlobError, match="chunk 3"):
        await read_all(store, sha)


async def test_swapped_dropped_or_extended_chunks_and_header_edits_are_caught(services):
    data = os.urandom(4 * CHUNK)
    store = store_for(services)
    sha, _ = await store.put(io.BytesIO(data))
    path = store.path(sha)
    original = path.read_bytes()
    sealed = CHUNK + TAG

    def chunk(i):
        return original[HEADER.size + i * sealed:HEADER.size + (i + 1) * sealed]

    cases = {
        "swap": original[:HEADER.size] + chunk(1) + chunk(0) + chunk(2) + chunk(3),
        "drop last": original[:-sealed],
        "extend": original + chunk(3),
        "header size": HEADER.pack(blobs.MAGIC, CHUNK, 3 * CHUNK) + original[HEADER.size:],
        "last chunk moved": original[:HEADER.size] + chunk(0) + chunk(1) + chunk(3) + chunk(2),
    }
    for name, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(BlobError):
            await read_all(store, sha)
    path.unlink()
    with pytest.raises(BlobError, match="missing"):
        await store.open(sha)


async def test_the_key_is_bound_to_the_content_name(services):
    store = store_for(services)
    sha, _ = await store.put(io.BytesIO(b"one"))
    other, _ = await store.put(io.BytesIO(b"two"))
    async with services.db() as db, db.begin():
        rows = {b.sha256: b for b in (await db.execute(select(Blob))).scalars()}
        rows[sha].wrapped_key = rows[other].wrapped_key
    with pytest.raises(VaultError):
        await store.open(sha)


async def nothing_stored(services, before):
    assert await counts(services.db) == before
    assert blob_files(services) == []


async def test_input_that_breaks_off_midway_leaves_nothing(services):
    before = await counts(services.db)

    async def broken():
        yield b"x" * 10_000
        raise ConnectionResetError("peer went away")

    with pytest.raises(InputError, match="reading the input failed .ConnectionResetError.; nothing was stored"):
        await store_for(services).put(broken())
    await nothing_stored(services, before)


async def test_input_shorter_or_longer_than_declared_leaves_nothing(services):
    before = await counts(services.db)
    store = store_for(services)
    with pytest.raises(InputError, match="cut off after 5000 of 9000 bytes"):
        await store.put(io.BytesIO(b"y" * 5000), expected_size=9000)
    with pytest.raises(InputError, match="longer than its declared size"):
        await store.put(io.BytesIO(b"y" * 5000), expected_size=4000)
    await nothing_stored(services, before)


async def test_oversize_input_is_refused_while_streaming(services):
    before = await counts(services.db)
    store = store_for(services, max_bytes=10 * CHUNK)

    def endless():
        while True:
            yield b"z" * CHUNK

    with pytest.raises(InputError, match="larger than publish.max_file_bytes"):
        await store.put(endless())
    with pytest.raises(InputError, match="larger than publish.max_file_bytes"):
        await store.put(io.BytesIO(b""), expected_size=11 * CHUNK)
    await nothing_stored(services, before)


async def test_cancelled_upload_leaves_nothing(services):
    before = await counts(services.db)
    started = asyncio.Event()

    async def slow():
        while True:
            started.set()
            yield b"w" * CHUNK
            await asyncio.sleep(0.01)

    task = asyncio.create_task(store_for(services).put(slow()))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await nothing_stored(services, before)


async def test_missing_or_special_paths_are_clear_errors(services, tmp_path):
    store = store_for(services)
    with pytest.raises(InputError, match="no such file"):
        await store.put(tmp_path / "nope")
    with pytest.raises(InputError, match="not a regular file"):
        await store.put(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="not a regular file"):
        await store.put(tmp_path / "fifo")
    assert blob_files(services) == []


async def test_a_failed_transaction_moves_placed_files_back_out(services):
    store = store_for(services)
    staged = await store.stage(io.BytesIO(b"rolled back"))
    with pytest.raises(RuntimeError):
        async with services.db() as db, db.begin():
            async with store.placing(db) as placer:
                assert await placer.place(staged)
                assert store.path(staged.sha256).exists()
                raise RuntimeError("a later step failed")
    assert not store.path(staged.sha256).exists() and staged.tmp_path.exists()
    staged.discard()
    async with services.db() as db:
        assert await db.get(Blob, staged.sha256) is None
    assert blob_files(services) == []
