"""The target menu: arrows, numbers, filter, quit."""

from bastion.policy import GrantedTarget
from bastion.ssh.menu import Chosen, Quit, TargetMenu

ITEMS = [GrantedTarget("db01", "postgres", frozenset({"shell"})), GrantedTarget("web01", "root", frozenset({"shell"})),
         GrantedTarget("web02", "deploy", frozenset({"shell"}))]


def menu():
    return TargetMenu("alice", list(ITEMS))


def test_enter_picks_the_first_entry():
    assert menu().feed(b"\r") == Chosen(ITEMS[0])


def test_arrow_keys_move():
    m = menu()
    assert m.feed(b"\x1b[B\x1b[B") is None
    assert m.feed(b"\r") == Chosen(ITEMS[2])
    m = menu()
    assert m.feed(b"\x1bOB\x1b[A\x1b[B\r") == Chosen(ITEMS[1])


def test_number_selects():
    assert menu().feed(b"2\r") == Chosen(ITEMS[1])


def test_type_to_filter_and_backspace():
    m = menu()
    m.feed(b"web")
    assert [item for _, item in m.visible()] == ITEMS[1:]
    m.feed(b"02")
    assert m.feed(b"\r") == Chosen(ITEMS[2])
    m = menu()
    m.feed(b"zzz")
    assert m.feed(b"\r") is None
    m.feed(b"\x7f\x7f\x7f")
    assert m.feed(b"\r") == Chosen(ITEMS[0])


def test_quit_keys():
    assert menu().feed(b"q") == Quit()
    assert menu().feed(b"\x03") == Quit()
    assert menu().feed(b"\x04") == Quit()


def test_render_escapes_nothing_dangerous_and_lists_only_given_items():
    text = menu().render().decode()
    assert "web01" in text and "db01" in text
    assert "no targets" in TargetMenu("bob", []).render().decode()


def test_garbage_keys_do_not_crash():
    m = menu()
    for chunk in (bytes(range(256)), b"\x1b" * 50, b"\x1b[" + b"9" * 100, b"\xff\xfe"):
        outcome = m.feed(chunk)
        assert outcome is None or isinstance(outcome, (Chosen, Quit))
