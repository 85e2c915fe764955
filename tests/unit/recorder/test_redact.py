"""Input the target does not echo (passwords) never reaches a recording; echoed input does."""

from __future__ import annotations

from bastion.clock import FixedClock
from bastion.recorder.export import export_cast
from bastion.recorder.redact import HIDDEN, MAX_PENDING_BYTES, EchoTracker

from .conftest import START, wait_until
from .containerfile import read_cast


def inputs(events: list[list]) -> list[str]:
    return [e[2] for e in events if e[1] == "i"]


async def export_events(env, rec, tmp_path) -> list[list]:
    out = tmp_path / f"{rec.session_id}.cast"
    export_cast(rec.path, out, env.vault, env.public_key)
    return read_cast(out)[1]


def typed(rec, clock: FixedClock, text: bytes, echo: bool, step: float = 0.1) -> None:
    for byte in text:
        rec.input(bytes([byte]))
        clock.advance(step / 2)
        if echo:
            rec.output(bytes([byte]))
        clock.advance(step / 2)


async def test_password_hidden_command_kept_controls_pass_times_monotonic(env, tmp_path):
    clock = FixedClock(START)
    store = env.store(clock=clock, recording__echo_window=1.0)
    rec = await env.open(store, echo_tracking=True)
    rec.output(b"$ ")
    typed(rec, clock, b"sudo -i", echo=True)
    rec.input(b"\r")
    rec.output(b"\r\n[sudo] password for alice: ")
    typed(rec, clock, b"Welc0me!", echo=False)  # the password
    rec.input(b"\r")
    clock.advance(0.05)
    # The target's next line starts with the password's first letters: that is not an echo.
    rec.output(b"\r\nWelcome to web01\r\n# ")
    rec.input(b"\x1b[A")  # arrow up: control sequences pass through as they are
    rec.output(b"\x1b[1mls -la\x1b[0m")
    rec.input(b"\x03")
    rec.output(b"^C\r\n# ")
    rec.input(b"\t")
    rec.output(b"\x07")
    await rec.close("exit")

    events = await export_events(env, rec, tmp_path)
    assert inputs(events) == ["s", "u", "d", "o", " ", "-", "i", "\r", HIDDEN, "\r", "\x1b[A", "\x03", "\t"]
    recorded_input = "".join(inputs(events))
    for fragment in ("Welc", "0me", "!"):
        assert fragment not in recorded_input
    times = [e[0] for e in events]
    assert times == sorted(times)
    # each released keystroke sits just before the output that echoed it
    first_s = next(i for i, e in enumerate(events) if e[1] == "i" and e[2] == "s")
    assert events[first_s + 1][1:] == ["o", "s"]


async def test_unechoed_input_is_hidden_by_the_flush_timer(env, tmp_path):
    clock = FixedClock(START)
    store = env.store(clock=clock, recording__echo_window=1.0, recording__flush_interval=0.02)
    rec = await env.open(store, echo_tracking=True)
    rec.output(b"Password: ")
    await rec.flush()
    assert rec.state.chunks == 1
    typed(rec, clock, b"hunter2", echo=False)
    clock.advance(5)  # well past the echo window
    await wait_until(lambda: rec.state.chunks >= 2)  # the timer hid the input and flushed it
    await rec.close("exit")
    events = await export_events(env, rec, tmp_path)
    assert inputs(events) == [HIDDEN]
    assert "hunter2" not in (tmp_path / f"{rec.session_id}.cast").read_text()


async def test_input_without_echo_tracking_is_only_noted_and_rate_limited(env, tmp_path):
    clock = FixedClock(START)
    store = env.store(clock=clock, recording__flush_interval=1.0)
    rec = await env.open(store, echo_tracking=False)
    for _ in range(1000):
        rec.input(b"bulk stdin payload\n")
    rec.output(b"ok\n")
    rec.input(b"more")
    clock.advance(1.5)
    rec.input(b"later")
    await rec.close("exit")
    assert rec.bytes_in == 1000 * 19 + 4 + 5
    events = await export_events(env, rec, tmp_path)
    assert inputs(events) == [HIDDEN, HIDDEN]
    assert "payload" not in (tmp_path / f"{rec.session_id}.cast").read_text()


async def test_unfinished_input_at_close_is_hidden(env, tmp_path):
    rec = await env.open(echo_tracking=True)
    rec.output(b"passphrase: ")
    rec.input(b"correct horse")
    await rec.close("client closed")
    events = await export_events(env, rec, tmp_path)
    assert inputs(events) == [HIDDEN]


def test_typeahead_is_matched_in_order():
    tracker = EchoTracker(1.0)
    assert tracker.input(0.0, b"l") == []
    assert tracker.input(0.1, b"s") == []
    assert tracker.input(0.2, b"\r") == []  # held back: order is kept behind undecided text
    assert tracker.output(0.3, b"ls\r\nfile1  file2\r\n$ ") == [(0.0, b"l"), (0.1, b"s"), (0.2, b"\r")]
    assert not tracker.pending


def test_echo_split_over_outputs_and_decorated_with_escapes():
    tracker = EchoTracker(1.0)
    # a bracketed paste: the leading control is released at once, nothing precedes it
    assert tracker.input(0.0, b"\x1b[200~echo hello\x1b[201~") == [(0.0, b"\x1b[200~")]
    assert tracker.output(0.1, b"\x1b[7mecho h") == []
    assert tracker.output(0.2, b"ello\x1b[27m") == [(0.0, b"echo hello"), (0.0, b"\x1b[201~")]


def test_a_mismatch_hides_everything_typed_before_that_output():
    tracker = EchoTracker(1.0)
    for index, key in enumerate(b"abc"):
        tracker.input(index * 0.1, bytes([key]))
    # "bc..." would match the last two keys if each were judged alone
    assert tracker.output(0.5, b"bc is what the server said") == [(0.0, HIDDEN), (0.1, HIDDEN), (0.2, HIDDEN)]


def test_output_of_only_controls_decides_nothing_and_the_window_does():
    tracker = EchoTracker(1.0)
    tracker.input(0.0, b"x")
    assert tracker.output(0.1, b"\x1b[H\x07") == []
    assert tracker.expire(0.5) == []
    assert tracker.expire(1.0) == [(0.0, HIDDEN)]


def test_multibyte_text_is_echo_checked_as_text():
    tracker = EchoTracker(1.0)
    tracker.input(0.0, "\u00e9t\u00e9".encode())
    assert tracker.output(0.1, "\u00e9t\u00e9".encode()) == [(0.0, "\u00e9t\u00e9".encode())]


def test_pending_input_is_bounded():
    tracker = EchoTracker(1.0)
    released = tracker.input(0.0, b"x" * (3 * MAX_PENDING_BYTES))
    assert released == [(0.0, HIDDEN)]  # one run, too big to wait for: hidden at once
    assert not tracker.pending
