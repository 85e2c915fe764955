"""The shared ring for recording jobs: first in, first out regions, bounds checked, size sealed."""

from __future__ import annotations

import errno
import os
import random

import pytest

from bastion.recorder.ring import PayloadRing, RingReader, resolve_without_ring


@pytest.fixture
def ring():
    ring = PayloadRing(4096)
    yield ring
    ring.close()


def reader_of(ring: PayloadRing) -> RingReader:
    return RingReader(ring.fd)


def test_bytes_go_into_the_ring_as_references_and_text_stays_inline(ring):
    events = [(0.0, "o", b"hello"), (0.5, "i", "typed"), (1.0, "o", b""), (1.5, "o", b"world")]
    placed = ring.place(1, events)
    assert placed == [(0.0, "o", (0, 5)), (0.5, "i", "typed"), (1.0, "o", (5, 0)), (1.5, "o", (5, 5))]
    assert list(reader_of(ring).resolve(placed)) == events
    assert ring.held == 10


def test_a_job_without_bytes_or_too_big_for_the_ring_is_left_inline(ring):
    assert ring.place(1, [(0.0, "i", "text only")]) is None
    assert ring.place(2, [(0.0, "o", b"x" * 4097)]) is None
    assert ring.held == 0


def test_regions_are_handed_out_in_order_wrap_around_and_refuse_what_would_overlap(ring):
    assert ring.place(1, [(0.0, "o", b"a" * 1500)])[0][2] == (0, 1500)
    assert ring.place(2, [(0.0, "o", b"b" * 1500)])[0][2] == (1500, 1500)
    assert ring.place(3, [(0.0, "o", b"c" * 1500)]) is None  # 1096 left at the end, 0 before the oldest
    ring.release(1)
    assert ring.place(3, [(0.0, "o", b"c" * 1500)])[0][2] == (0, 1500)  # wraps to the start
    assert ring.place(4, [(0.0, "o", b"d" * 10)]) is None  # the start is full up to job 2's region
    ring.release(2)
    assert ring.place(4, [(0.0, "o", b"d" * 1500)])[0][2] == (1500, 1500)  # after the newest
    assert ring.place(5, [(0.0, "o", b"e" * 1097)]) is None  # one byte more than the end holds
    assert ring.place(5, [(0.0, "o", b"e" * 1096)])[0][2] == (3000, 1096)


@pytest.mark.parametrize("in_order", [True, False], ids=["answered-in-order", "released-out-of-order"])
def test_no_region_in_flight_is_ever_written_over(ring, in_order):
    """Random jobs: every job in flight still reads back what was placed for it, however they are freed."""
    chance = random.Random(7)
    reader = reader_of(ring)
    in_flight: list[tuple[int, list, list]] = []  # (job id, events, placed)
    inline = placed_jobs = 0
    for job_id in range(1, 3000):
        if in_flight and chance.random() < 0.45:
            done, events, placed = in_flight.pop(0 if in_order else chance.randrange(len(in_flight)))
            assert list(reader.resolve(placed)) == events
            ring.release(done)
        events = [(0.0, "o", os.urandom(chance.randint(0, 700))) for _ in range(chance.randint(1, 3))]
        placed = ring.place(job_id, events)
        if placed is None:
            inline += 1
        else:
            placed_jobs += 1
            in_flight.append((job_id, events, placed))
        for _, earlier, where in in_flight:
            assert list(reader.resolve(where)) == earlier
        assert ring.held == sum(len(data) for _, events, _ in in_flight for _, _, data in events)
    assert inline > 100 and placed_jobs > 1000  # both paths, many times


def test_a_job_answered_out_of_order_frees_only_its_own_region(ring):
    ring.place(1, [(0.0, "o", b"a" * 100)])
    ring.place(2, [(0.0, "o", b"b" * 200)])
    ring.release(2)
    assert ring.held == 100
    ring.release(99)  # an answer for a job that held nothing
    assert ring.held == 100


def test_the_ring_cannot_be_shrunk_or_grown_by_whoever_holds_its_descriptor(ring):
    with pytest.raises(PermissionError):
        os.ftruncate(ring.fd, 0)  # the sealer shrinking it would crash the gateway's next copy (SIGBUS)
    with pytest.raises(PermissionError):
        os.ftruncate(ring.fd, 1 << 30)
    assert os.fstat(ring.fd).st_size == 4096


def test_the_sealer_maps_the_ring_read_only(ring):
    reader = reader_of(ring)
    with pytest.raises(TypeError):
        reader._map[0:1] = b"x"


@pytest.mark.parametrize("reference", [(4090, 7), (-1, 3), (0, -1), (4097, 0), (1,), (0, 1, 2), ("0", 1),
                                        (0.0, 1), (True, 1), (0, 1 << 70)])
def test_a_reference_outside_the_ring_or_not_two_integers_is_refused(ring, reference):
    with pytest.raises(ValueError):
        list(reader_of(ring).resolve([(0.0, "o", reference)]))


def test_a_sealer_without_a_ring_refuses_references():
    with pytest.raises(ValueError):
        list(resolve_without_ring([(0.0, "o", b"fine"), (0.0, "o", (0, 1))]))
    events = [(0.0, "o", b"fine")]
    assert list(resolve_without_ring(events)) == events


def test_a_closed_ring_leaves_no_descriptor_open():
    ring = PayloadRing(4096)
    fd = ring.fd
    ring.close()
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
