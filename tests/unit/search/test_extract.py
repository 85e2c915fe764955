"""Command and output extraction from hand-built asciicast events, shaped like bash 5.2 renders them."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.search import extract as ex
from bastion.search.extract import extract, extract_cast

PROMPT = "root@web01:~# "
ENTER_ECHO = "\r\n\x1b[?2004l\r"        # what bash prints when a line is accepted
PROMPT_DRAW = "\x1b[?2004h" + PROMPT     # ... and when it asks for the next one


class Cast:
    """Builds events the way the recorder stores them: input just before the output it caused."""

    def __init__(self, width: int = 80, height: int = 24):
        self.width, self.height = width, height
        self.time = 0.0
        self.events: list[list] = []
        self.o(PROMPT_DRAW)

    def _add(self, code: str, data: str) -> "Cast":
        self.time = round(self.time + 0.25, 3)
        self.events.append([self.time, code, data])
        return self

    def o(self, data: str) -> "Cast":
        return self._add("o", data)

    def i(self, data: str) -> "Cast":
        return self._add("i", data)

    def r(self, width: int, height: int) -> "Cast":
        return self._add("r", f"{width}x{height}")

    def type(self, text: str, echo: str | None = None) -> "Cast":
        return self.i(text).o(text if echo is None else echo)

    def key(self, keys: str, echo: str) -> "Cast":
        return self.i(keys).o(echo)

    def enter(self, output: str = "", echo: str = ENTER_ECHO) -> "Cast":
        self.i("\r")
        self.o(echo + output + PROMPT_DRAW)
        self.accepted_at = self.time  # the shell's answer to Enter: the line is complete on screen
        return self

    def run(self, **kw):
        return extract(self.events, width=self.width, height=self.height, **kw)


def commands(result) -> list[str]:
    return [c.text for c in result.commands]


def outputs(result) -> list[str]:
    return [o.text for o in result.output]


def test_a_plain_command_is_found_at_the_moment_the_shell_accepts_it():
    cast = Cast().type("ls -la /etc").enter("total 0\r\n")
    result = cast.run()
    assert commands(result) == ["ls -la /etc"]
    assert result.commands[0].offset == cast.accepted_at
    assert "total 0" in outputs(result)
    assert f"{PROMPT}ls -la /etc" not in outputs(result)  # the command line is the command, not output
    assert not result.truncated


def test_backspace_corrections_give_the_command_that_ran():
    cast = Cast().type("rm -rf /tmpp").key("\x7f", "\b\x1b[K").enter()
    assert commands(cast.run()) == ["rm -rf /tmp"]


def test_cursor_left_and_insert_in_the_middle():
    cast = Cast().type("echo abc").key("\x1b[D", "\b").key("\x1b[D", "\b").key("X", "Xbc\b\b").enter("aXbc\r\n")
    assert commands(cast.run()) == ["echo aXbc"]


def test_ctrl_u_and_ctrl_w_as_bash_renders_them():
    cast = (Cast().type("echo one two").key("\x15", "\b" * 12 + "\x1b[K").type("ls /nonexist")
            .enter("ls: cannot access '/nonexist': No such file or directory\r\n")
            .type("echo hello wor").key("\x17", "\b\b\b\x1b[K").enter("hello\r\n"))
    result = cast.run()
    assert commands(result) == ["ls /nonexist", "echo hello"]
    assert "ls: cannot access '/nonexist': No such file or directory" in outputs(result)


def test_history_recall_with_the_up_arrow():
    cast = (Cast().type("echo SEARCH-MEE").key("\x7f", "\b\x1b[K").enter("SEARCH-ME\r\n")
            .type("echo other").enter("other\r\n")
            .key("\x1b[A", "echo other").key("\x1b[A", "\b\b\b\b\bSEARCH-ME")  # bash redraws the difference
            .enter("SEARCH-ME\r\n"))
    result = cast.run()
    assert commands(result) == ["echo SEARCH-ME", "echo other", "echo SEARCH-ME"]
    assert result.commands[2].offset == cast.accepted_at


def test_history_recall_over_typed_text_that_wraps():
    # 20 columns: "echo b" ends exactly at the margin, so bash forces the wrap (" \r"); Up then
    # rewrites from the first differing column and the recalled command runs over three rows.
    cast = Cast(width=20, height=10)
    cast.type("echo " + "a" * 30).enter("a" * 30 + "\r\n")
    cast.type("echo b", "echo b \r").key("\x1b[A", "\x1b[A" + "\x1b[C" * 19 + "a" * 30)
    cast.enter("a" * 30 + "\r\n")
    assert commands(cast.run()) == ["echo " + "a" * 30] * 2


def test_a_wrapped_line_edited_in_its_first_row():
    # Ctrl-A, six cursor moves right (crossing into the second row with CRLF), insert "ZZ"; at Enter
    # bash moves down through the rows with LF before its final CRLF.
    cast = Cast(width=20, height=10)
    cast.type("echo 1234567890123456789012345678901234")
    cast.key("\x01", "\x1b[A\x1b[A\x1b[C")
    for _ in range(5):
        cast.key("\x1b[C", "\x1b[C")
    cast.key("\x1b[C", "\r\n\r")
    cast.key("ZZ", "ZZ234567890123456789012345678901234\x1b[A\r\x1b[C\x1b[C")
    cast.enter("1ZZ234567890123456789012345678901234\r\n", echo="\r\n\r\r\n\x1b[?2004l\r")
    assert commands(cast.run()) == ["echo 1ZZ234567890123456789012345678901234"]


def test_reverse_search_takes_the_line_bash_restores():
    cast = (Cast(width=60).type("echo alpha-one").enter("alpha-one\r\n").type("echo beta").enter("beta\r\n")
            .key("\x12", "\r(reverse-i-search)`': ")
            .key("alp", "\b\b\bl': echo \x1b[7mal\x1b[27mpha-one\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b"
                        "p': echo \x1b[7malp\x1b[27mha-one\b\b\b\b\b\b\b\b\b")
            .enter("alpha-one\r\n", echo="\r\x1b[11P" + PROMPT + "echo alpha-one" + "\b" * 9 + ENTER_ECHO))
    assert commands(cast.run()) == ["echo alpha-one", "echo beta", "echo alpha-one"]


def test_tab_completion_listing_and_clear_screen():
    cast = (Cast().type("ls fi").key("\t", "\x07").key("\t", f"\r\nfile1  file2\r\n{PROMPT}ls fi")
            .type("le2").enter("file2\r\n")
            .type("echo xyz").key("\x0c", f"\x1b[H\x1b[2J{PROMPT}echo xyz").enter("xyz\r\n"))
    result = cast.run()
    assert commands(result) == ["ls file2", "echo xyz"]
    assert "file1  file2" in outputs(result)  # seen before the clear wiped it


def test_a_hidden_password_line_is_never_a_command():
    cast = (Cast().type("read -s -p 'Pass: ' pw; echo; echo len=${#pw}")
            .i("\r").o(ENTER_ECHO + "Pass: ")
            .i("<hidden>").i("\r").o("\r\nlen=7\r\n" + PROMPT_DRAW)
            .type("echo after").enter("after\r\n"))
    result = cast.run()
    assert commands(result) == ["read -s -p 'Pass: ' pw; echo; echo len=${#pw}", "echo after"]
    assert result.hidden_lines == 1


def test_a_line_with_any_hidden_input_is_skipped_even_if_the_screen_shows_text():
    # Part of the line was typed without an echo the recorder could prove: the whole line is left out.
    cast = Cast().type("mysql -u root -p").i("<hidden>").o("s3cret").i("\r").o(ENTER_ECHO + PROMPT_DRAW)
    result = cast.run()
    assert commands(result) == [] and result.hidden_lines == 1


def test_alternate_screen_programs_are_skipped_and_the_main_screen_comes_back():
    cast = (Cast().type("echo before").enter("before\r\n").type("vim notes.txt")
            .enter("\x1b[?1049h\x1b[22;0;0t\x1b[H\x1b[2J~\r\n~ ALT-SCREEN-SECRET\r\n\x1b[24;1H\"notes.txt\" [New]")
            .key(":wq", ":wq").i("\r").o("\x1b[?1049l\x1b[23;0;0t\r" + PROMPT_DRAW)
            .type("echo after").enter("after\r\n"))
    # the last enter() above drew the prompt after vim's exit sequence, like bash does
    result = cast.run()
    assert commands(result) == ["echo before", "vim notes.txt", "echo after"]
    assert not any("ALT-SCREEN-SECRET" in line for line in outputs(result))
    assert "before" in outputs(result) and "after" in outputs(result)


def test_output_that_scrolls_by_is_indexed_once_per_distinct_line():
    lines = "".join(f"line {n:03d}\r\n" for n in range(100)) + "line 000\r\n"
    cast = Cast(height=24).type("seq").enter(lines).type("echo done").enter("done\r\n")
    result = cast.run()
    found = outputs(result)
    assert all(f"line {n:03d}" in found for n in range(100))
    assert found.count("line 000") == 1


def test_long_output_is_skipped_in_the_middle_but_commands_after_it_are_found():
    big = "".join(f"row {n:07d} {'x' * 40}\r\n" for n in range(40_000))  # about 2 MB in one burst
    cast = Cast().type("cat big.log").enter(big).type("echo AFTER-BIG").enter("AFTER-BIG\r\n")
    result = cast.run()
    assert commands(result) == ["cat big.log", "echo AFTER-BIG"]
    assert result.skipped_chars > 1_000_000
    found = outputs(result)
    assert any(line.startswith("row 0000000") for line in found)   # the head
    assert any(line.startswith("row 0039999") for line in found)   # the tail
    assert not any(line.startswith("row 0020000") for line in found)


def test_output_a_little_longer_than_the_head_is_rendered_whole():
    lines = "".join(f"mid {n:05d} {'y' * 60}\r\n" for n in range(300))  # about 21 KB: head and part of the tail
    result = Cast().type("cat mid.log").enter(lines).run()
    assert result.skipped_chars == 0
    assert all(f"mid {n:05d} {'y' * 60}" in outputs(result) for n in range(300))


def test_a_resize_keeps_extraction_going():
    cast = Cast(width=80).type("echo wide").enter("wide\r\n").r(30, 10).o("\r\x1b[K" + PROMPT)
    cast.type("echo " + "n" * 40).enter("n" * 40 + "\r\n")
    assert commands(cast.run()) == ["echo wide", "echo " + "n" * 40]


def test_wide_characters():
    cast = Cast(width=40).type("echo \u00e9\u4e2d\u6587x").enter("\u00e9\u4e2d\u6587x\r\n")
    result = cast.run()
    assert commands(result) == ["echo \u00e9\u4e2d\u6587x"] and "\u00e9\u4e2d\u6587x" in outputs(result)


def test_lines_typed_ahead_in_one_read_are_both_found():
    cast = Cast(width=60).i("echo typed-ahead-one\recho typed-ahead-two\r")
    cast.o("echo typed-ahead-one\r\n" + "\x1b[?2004l\rtyped-ahead-one\r\n" + PROMPT_DRAW
           + "echo typed-ahead-two" + ENTER_ECHO + "typed-ahead-two\r\n" + PROMPT_DRAW)
    assert commands(cast.run()) == ["echo typed-ahead-one", "echo typed-ahead-two"]


def test_a_bracketed_paste_does_not_run_line_by_line():
    cast = Cast(width=40).key("\x1b[200~echo p1\recho p2\r\x1b[201~",
                              "\x1b[7mecho p1\x1b[27m\r\n\r\x1b[7mecho p2\x1b[27m\r\n\r")
    cast.enter("p1\r\np2\r\n", echo="\x1b[A\x1b[A" + "\x1b[C" * 14 + "echo p1\r\n\recho p2\r\n\r\x1b[A" + ENTER_ECHO)
    result = cast.run()
    assert commands(result) == ["echo p1"]  # documented: a multi-line paste counts by its first line
    assert "echo p2" in outputs(result)


def test_exec_output_without_a_terminal():
    events = [[0.1, "o", "first line\nsecond line\n"], [0.2, "i", "<hidden>"], [0.3, "o", "third\n"]]
    result = extract(events, commands=False, crlf=True)
    assert result.commands == []
    assert outputs(result) == ["first line", "second line", "third"]


def test_extract_cast_reads_a_header_and_skips_bad_lines():
    lines = [json.dumps({"version": 2, "width": 40, "height": 10}), "not json", "[[[[", "{}",
             json.dumps([0.1, "o", PROMPT]), json.dumps([0.2, "i", "uptime"]), json.dumps([0.3, "o", "uptime"]),
             json.dumps([0.4, "i", "\r"]), json.dumps([0.5, "o", "\r\n up 3 days\r\n" + PROMPT])]
    result = extract_cast(lines)
    assert commands(result) == ["uptime"] and " up 3 days" in outputs(result)
    assert result.events == len(lines) - 1


def test_garbage_events_are_ignored():
    events = ["x", None, 5, [], [1], [1, "o"], [True, "o", "a"], [-1, "o", "b"], [float("nan"), "o", "c"],
              [float("inf"), "o", "d"], ["1", "o", "e"], [1, "z", "f"], [1, "o", b"g"], [1, "o", ["h"]],
              [1, "r", "99999999x99999999"], [1, "r", "0x0"], [1, "r", "axb"], [1, "r", "10000x10000"],
              [2, "o", "\x1b[99999999999999999999J\x1b[5J\x1b[7K\x1b[?1049l\x1b[r\x1b[9999;9999H\x1b[99999M"],
              [3, "o", "\x1b]0;" + "t" * 10000], [4, "i", "\r" * 100_000], [5, "o", "ok\r\n"]]
    result = extract(events, width=True, height="24")
    assert result.events == len(events)
    assert all(len(line.text) <= ex.MAX_LINE_CHARS for line in result.output)


def test_bounds_cut_the_text_kept(monkeypatch):
    monkeypatch.setattr(ex, "MAX_OUTPUT_BYTES", 200)
    monkeypatch.setattr(ex, "MAX_COMMANDS", 2)
    cast = Cast()
    for n in range(5):
        cast.type(f"echo {n}").enter(f"{'o' * 50} {n}\r\n")
    result = cast.run()
    assert commands(result) == ["echo 0", "echo 1"] and result.truncated
    assert sum(len(line.text.encode()) for line in result.output) <= 200


_FRAGMENTS = list("ab \r\n\t\x7f\x08\x1b[]?;0123456789hlHJKmABCDP~\u4e2d") + [
    "<hidden>", "\r\n", "\x1b[?1049h", "\x1b[?1049l", "\x1b[2J", "\x1b[K", "\x1b[A", "\x1b[200~", "\x1b[201~",
    "\x1b[3;5r", "\x1bM", "\x1bc", "\x1b[2L", "\x1b[3M", "\x1b[10;3H", PROMPT]
_data = st.just("<hidden>") | st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join)
_event = st.one_of(
    st.tuples(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from("oir"), _data).map(list),
    st.tuples(st.floats(min_value=0, max_value=100), st.just("r"),
              st.from_regex(r"\A[0-9]{1,6}x[0-9]{1,6}\Z")).map(list),
    st.lists(st.integers() | st.text(max_size=3) | st.none(), max_size=4),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, max_size=60), st.integers(-5, 2000), st.integers(-5, 2000), st.booleans())
def test_random_events_never_crash_and_stay_bounded(events, width, height, as_exec):
    result = extract(events, width=width, height=height, commands=not as_exec, crlf=as_exec)
    assert result.events == len(events)
    assert len(result.commands) <= ex.MAX_COMMANDS
    assert all(c.text and c.text == c.text.strip() for c in result.commands)
    assert all(line.text.strip() for line in result.output)
    assert len({line.text for line in result.output}) == len(result.output)
