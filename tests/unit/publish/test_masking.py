"""The `pii` masking profile: no resident ID, card or mobile number and no e-mail address survives, in any
layout, and the full view path (catalog → policy → access) never sends one."""

from __future__ import annotations

import datetime as dt
import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.publish import access
from bastion.publish.masking import (column_kind, id_check_char, is_card_number, is_mobile, is_resident_id,
                                     luhn_valid, mask_row, mask_text, mask_value, sensitive_columns)

from .conftest import authorize

SEPARATORS = " -\u00a0\u3000\u2013\uff0d"
FAST = settings(max_examples=150, deadline=None)


# --- generators -------------------------------------------------------------------------------------------


def luhn_digit(body: str) -> str:
    for d in "0123456789":
        if luhn_valid(body + d):
            return d
    raise AssertionError("no Luhn digit")


@st.composite
def resident_ids(draw) -> str:
    region = draw(st.integers(100000, 999999))
    born = draw(st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)))
    seq = draw(st.integers(0, 999))
    first17 = f"{region:06d}{born:%Y%m%d}{seq:03d}"
    check = id_check_char(first17)
    if check == "X" and draw(st.booleans()):
        check = "x"
    return first17 + check


@st.composite
def card_numbers(draw) -> str:
    body = draw(st.text("0123456789", min_size=12, max_size=18))
    return body + luhn_digit(body)


@st.composite
def mobiles(draw) -> str:
    return "1" + draw(st.sampled_from("3456789")) + draw(st.text("0123456789", min_size=9, max_size=9))


sensitive_numbers = st.one_of(resident_ids(), card_numbers(), mobiles())


@st.composite
def formatted(draw, number: str) -> str:
    """`number` with single spaces, dashes or no-break spaces between some of its characters."""
    out = [number[0]]
    for ch in number[1:]:
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(SEPARATORS)))
        out.append(ch)
    return "".join(out)


# Surrounding text: letters, CJK, punctuation, digits and separators, so runs may touch the number.
noise = st.text(st.sampled_from("abcXyz 中文，。:;()/#_+=@.\n\t-0123456789\u00a0"), max_size=30)


def squeeze(text: str) -> str:
    return "".join(ch for ch in text if ch not in SEPARATORS)


def assert_hidden(number: str, out: str) -> None:
    plain = number.upper()
    assert plain not in out.upper()
    assert plain not in squeeze(out).upper()


# --- the detectors ----------------------------------------------------------------------------------------


@FAST
@given(resident_ids())
def test_generated_ids_are_recognised(ident):
    assert is_resident_id(ident)


@FAST
@given(resident_ids(), st.integers(0, 17), st.sampled_from("0123456789X"))
def test_an_id_with_a_wrong_check_or_changed_digit_is_not_an_id(ident, pos, ch):
    changed = ident[:pos] + ch + ident[pos + 1:]
    if changed.upper() != ident.upper():
        assert not is_resident_id(changed) or (pos < 17 and id_check_char(changed[:17]) == changed[17].upper())


def test_detectors_on_known_values():
    assert is_resident_id("11010519491231002X") and is_resident_id("11010519491231002x")
    assert not is_resident_id("110105194912310021")          # wrong check digit
    feb30 = "11010519490230002"
    assert not is_resident_id(feb30 + id_check_char(feb30))   # 30 February, checksum valid
    assert not is_resident_id("11010518490101002" + id_check_char("11010518490101002"))  # born 1849
    assert is_card_number("4111111111111111") and not is_card_number("4111111111111112")
    assert not is_card_number("411111111111")                 # 12 digits: too short
    assert is_mobile("13812345678") and not is_mobile("12812345678") and not is_mobile("1381234567")


# --- mask_text --------------------------------------------------------------------------------------------


@FAST
@given(sensitive_numbers.flatmap(lambda n: st.tuples(st.just(n), formatted(n))), noise, noise)
def test_no_sensitive_number_survives_mask_text(pair, before, after):
    number, shown = pair
    text = before + shown + after
    out = mask_text(text)
    assert len(out) == len(text)
    assert_hidden(number, out)
    # Only stars replace characters, nothing else is altered.
    assert all(o == i or o == "*" for o, i in zip(out, text))


@FAST
@given(st.lists(sensitive_numbers, min_size=2, max_size=5), st.sampled_from([" ", ", ", "/", "中", "|"]))
def test_several_numbers_in_one_text_are_all_masked(numbers, glue):
    text = glue.join(numbers)
    out = mask_text(text)
    for number in numbers:
        assert_hidden(number, out)


@FAST
@given(sensitive_numbers)
def test_full_width_digits_are_masked_too(number):
    wide = number.translate(str.maketrans("0123456789Xx", "０１２３４５６７８９Xx"))
    out = mask_text(f"号码：{wide}。")
    assert wide not in out and out.count("*") >= 4


@FAST
@given(st.text(st.sampled_from("abcdefghij ,.;:!?中文"), max_size=80))
def test_text_without_personal_data_is_unchanged(text):
    assert mask_text(text) == text


def test_format_keeps_three_then_stars_then_four():
    assert mask_text("11010519491231002X") == "110***********002X"
    ident = "44030419800101123" + id_check_char("44030419800101123")
    assert mask_text(f"ID {ident} ok") == f"ID 440***********{ident[-4:]} ok"
    assert mask_text("call 13812345678") == "call 138****5678"
    assert mask_text("138 1234 5678") == "138 **** 5678"
    assert mask_text("手机：138　1234　5678") == "手机：138　****　5678"
    assert mask_text("138–1234–5678 / 138－1234－5678") == "138–****–5678 / 138－****－5678"
    card = "622202123456789" + luhn_digit("622202123456789")
    assert mask_text(f"card {card[:4]}-{card[4:8]}-{card[8:12]}-{card[12:]}") == f"card 622*-****-****-{card[12:]}"
    assert mask_value("110105194912310020") == "110***********0020"
    assert mask_value("张三丰") == "张**"
    assert mask_value("abcd") == "a***" and mask_value("x") == "*" and mask_value("") == ""


def test_whole_values_keep_three_and_four_and_short_ones_keep_less():
    for n in range(1, 30):
        masked = mask_value("9" * n)
        assert len(masked) == n and "*" in masked
        assert masked.count("9") == (7 if n >= 11 else 3 if n >= 8 else 2 if n >= 5 else 1 if n >= 2 else 0)
        if n >= 11:
            assert masked == "999" + "*" * (n - 7) + "9999"


def test_very_long_digit_runs_are_masked_whole_and_fast():
    import time

    text = "1" * 200_000 + " and " + "1-" * 100_000
    started = time.monotonic()
    out = mask_text(text)
    assert time.monotonic() - started < 20  # linear: well under a second here; quadratic: minutes
    assert set(squeeze(out)) <= set("*and")


def test_long_cells_without_personal_data_mask_in_linear_time():
    # A regex looking for the local part of an address first is quadratic on a long word.
    import time

    for text in ("a" * 1_000_000, "x.y-" * 250_000, ("q@" + "a" * 40) * 20_000):
        started = time.monotonic()
        mask_text(text)
        assert time.monotonic() - started < 20, text[:10]  # linear: milliseconds; quadratic: minutes


# --- e-mail addresses -------------------------------------------------------------------------------------

local_parts = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-"),
                      min_size=1, max_size=24)
domains = st.tuples(st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), min_size=1, max_size=3),
                    st.from_regex(r"[a-z]{2,6}", fullmatch=True)).map(lambda t: ".".join(t[0] + [t[1]]))


@FAST
@given(local_parts, domains, st.sampled_from(["", " ", "邮箱：", "<", "mailto:"]), st.sampled_from(["", " ", ">", "，"]))
def test_no_email_address_survives(local, domain, before, after):
    address = f"{local}@{domain}"
    text = before + address + after
    out = mask_text(text)
    assert len(out) == len(text)
    assert address not in out
    masked_local = out[len(before):len(before) + len(local)]
    assert masked_local.count("*") >= len(local) - 1 and masked_local.count("*") >= 1


def test_email_format():
    assert mask_text("mail bob.smith@example.com now") == "mail b********@example.com now"
    assert mask_text("x@example.com") == "*@example.com"
    assert mask_text("no address @ here, a@b") == "no address @ here, a@b"


# --- columns ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, kind", [
    ("name", "name"), ("Full Name", "name"), ("customer", "name"), ("firstName", "name"), ("cardholder", "name"),
    ("姓名", "name"), ("客户姓名", "name"), ("联系人", "name"), ("持卡人", "name"),
    ("id", "ident"), ("ID", "ident"), ("UserID", "ident"), ("customerId", "ident"), ("IDNumber", "ident"),
    ("id_card", "ident"), ("phone", "ident"), ("phoneNumber", "ident"), ("Mobile No", "ident"),
    ("cardNumber", "ident"), ("CardNo", "ident"), ("account", "ident"), ("acct_no", "ident"), ("iban", "ident"),
    ("E-mail", "ident"), ("email_address", "ident"),
    ("身份证号", "ident"), ("证件号码", "ident"), ("手机号", "ident"), ("联系电话", "ident"), ("银行卡号", "ident"),
    ("账号", "ident"), ("帐户", "ident"), ("邮箱", "ident"),
    ("amount", None), ("city", None), ("valid", None), ("paid", None), ("金额", None), ("城市", None),
    ("date", None), ("", None),
])
def test_column_headers(header, kind):
    assert column_kind(header) == kind


def test_mask_row_masks_named_columns_whole_and_free_text_elsewhere():
    header = ["姓名", "phone", "note", "amount"]
    columns = sensitive_columns(header)
    assert columns == {0: "name", 1: "ident"}
    row = mask_row(["张三丰", "010-12345678", "id 11010519491231002X", "12.50"], columns)
    assert row == ("张**", "010*****5678", "id 110***********002X", "12.50")
    assert mask_row(["a", "b"], {}, "none") == ("a", "b")
    assert sensitive_columns(header, "none") == {}


@FAST
@given(st.lists(st.tuples(sensitive_numbers, st.text(max_size=10)), min_size=1, max_size=6))
def test_no_sensitive_number_survives_mask_row(cells):
    row = [f"{extra}{number}" for number, extra in cells]
    out = mask_row(row, {})
    assert [len(c) for c in out] == [len(c) for c in row]
    for (number, _), cell in zip(cells, out):
        assert_hidden(number, cell)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError):
        mask_text("13812345678", "everything")


# --- the whole view path ----------------------------------------------------------------------------------


def sample_values(seed: int = 7, count: int = 40) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            first17 = f"{rng.randint(110000, 659999)}{rng.randint(1950, 2010)}{rng.randint(1, 12):02d}" \
                      f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
            out.append(first17 + id_check_char(first17))
        elif kind == 1:
            body = "".join(rng.choice("0123456789") for _ in range(rng.randint(12, 18)))
            out.append(body + luhn_digit(body))
        else:
            out.append("1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9)))
    return out


def spaced(value: str, rng: random.Random) -> str:
    return "".join(ch + (rng.choice(SEPARATORS) if rng.random() < 0.2 and i < len(value) - 1 else "")
                   for i, ch in enumerate(value))


async def all_pages(services, authorization, path):
    pages, page = [], 1
    while True:
        result = await access.view(services, authorization, path, page=page)
        pages.append(result)
        if not result.has_next:
            return pages
        page += 1


async def test_a_pii_view_never_sends_a_sensitive_value(make_services, users, tmp_path):
    from bastion.publish.catalog import Catalog

    services = make_services(publish__rows_per_page=7)
    catalog = Catalog.from_services(services, actor="tester")
    rng = random.Random(11)
    values = sample_values()
    emails = [f"user{i}.{rng.randint(100, 999)}@example{i}.com" for i in range(10)] + ["z@q.cn"]
    folder = tmp_path / "pii"
    folder.mkdir()
    lines = ["客户姓名,身份证号,手机,note,amount"]
    for i, value in enumerate(values):
        lines.append(f"张{i}三,{value},{values[-1 - i]},\"see {spaced(value, rng)} or {emails[i % len(emails)]}\",{i}.5")
    (folder / "people.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "log.txt").write_text("".join(f"{i} user {spaced(v, rng)} wrote {emails[i % len(emails)]}\n"
                                            for i, v in enumerate(values)), encoding="gb18030")
    # Very long lines: display lines wrap (at 2000 characters), and no number may be cut in half across
    # them; each value sits at another offset around the first wrap.
    filler = "".join(rng.choice(["word ", "中文", "x", "-", " ", "ab.cd "]) for _ in range(3000))
    long_lines = [filler.join(values)] + ["中" * (1830 + i) + " see ID " + v + " " + "word " * 100
                                          for i, v in enumerate(values)]
    (folder / "long.log").write_text("\n".join(long_lines) + "\n", encoding="utf-8")
    (folder / "doc.json").write_text(json.dumps({"rows": [{"id": v, "text": "x" * 1990 + v} for v in values],
                                                 "mail": emails}), encoding="utf-8")
    await catalog.add("people", folder, classification="internal")
    await catalog.publish("people")
    await catalog.grant("people", user="alice", mode="view", mask="pii")
    auth = await authorize(services, users["alice"], "people")
    assert auth.mask == "pii"
    shown = []
    for path in ("people.csv", "log.txt", "long.log", "doc.json"):
        for result in await all_pages(services, auth, path):
            assert result.mask == "pii"
            shown.append("\n".join([" ".join(result.header)] + [" ".join(r) for r in result.rows]
                                   + list(result.lines)))
    everything = "\n".join(shown)
    assert "张0三" not in everything and "张**" in everything
    joined = squeeze(everything.replace("\n", ""))
    for value in values:
        assert value not in everything and value not in joined, value
    for email in emails:
        assert email not in everything, email
    assert len(re.findall(r"\*{4,}", everything)) >= len(values) * 3
    # The same grant without masking shows them (the test above can fail).
    await catalog.grant("people", user="bob", mode="view")
    plain = await access.view(services, await authorize(services, users["bob"], "people"), "people.csv")
    assert values[0] in " ".join(" ".join(r) for r in plain.rows)


@pytest.mark.parametrize("written", ["138.1234.5678", "138  1234  5678", "138 - 1234 - 5678", "138/1234/5678",
                                     "138_1234_5678", "138\u200b1234\u200b5678", "138,1234,5678",
                                     "4111.1111.1111.1111", "4111_1111_1111_1111", "4111/1111/1111/1111"])
def test_numbers_written_with_dots_slashes_underscores_or_invisible_joiners_are_masked(written):
    shown = mask_text(f"call {written} today")
    digits = "".join(c for c in written if c.isdigit())
    assert "".join(c for c in shown if c.isdigit()) != digits and len(shown) == len(written) + 11
    assert shown.count("*") >= 4
