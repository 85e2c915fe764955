"""Masking profiles for rendered views; `pii` hides personal data. Pure functions: same length in and out."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Sequence

PROFILES = ("none", "pii")
STAR = "*"

# GB 11643-1999: weights 2^(17-i) mod 11, check digit by ISO 7064 MOD 11-2.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Digits joined by up to three separators ("138 1234-5678", "6222 0212 ...", "138 - 1234 - 5678"); an ID
# may end in X. Spaces, dashes, dots, slashes, underscores, commas and tabs, ASCII and the full-width and
# typographic ones Chinese text uses ("138　1234　5678"), and invisible joiners that display as nothing.
# Masking an IP address or a long amount along with them is the safe side of this trade.
SEPARATORS = (" -./_,\t\u00a0\u3000\u2010\u2011\u2012\u2013\u2014\u2212\ufe63\uff0d"
              "\u200b\u200c\u200d\u2060\ufeff")
_SEPARATORS = SEPARATORS
_SEP_CLASS = "[" + "".join(re.escape(c) for c in SEPARATORS) + "]"
_RUN = re.compile(rf"\d(?:{_SEP_CLASS}{{0,3}}\d)*(?:{_SEP_CLASS}{{0,3}}[Xx])?")
# A run this long is no single number; masking all of it is cheaper than scanning every window.
_MAX_RUN_DIGITS = 64
# E-mail addresses are found from each '@' outwards (a regex scanning for the local part first is quadratic
# on long runs of letters, and CSV cells may be a megabyte long).
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_KEEP_PREFIX, _KEEP_SUFFIX = 3, 4


def id_check_char(first17: str) -> str:
    """The 18th character of a resident ID whose first 17 digits are `first17`."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS)) % 11]


def _plausible_birth_date(digits: str) -> bool:
    try:
        born = dt.date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def is_resident_id(value: str) -> bool:
    """18 characters, 17 digits and a digit or X, valid MOD 11-2 check, a plausible birth date."""
    if len(value) != 18 or not value[:17].isdecimal() or not (value[17].isdecimal() or value[17] in "Xx"):
        return False
    if not _plausible_birth_date(value[6:14]):
        return False
    last = "X" if value[17] in "Xx" else str(int(value[17]))  # int(): full-width digits count too
    return id_check_char(value[:17]) == last


def luhn_valid(digits: str) -> bool:
    if not digits.isdecimal():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """13-19 digits with a valid Luhn check digit."""
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def is_mobile(digits: str) -> bool:
    """A mainland mobile number: 11 digits, 1 then 3-9."""
    return len(digits) == 11 and digits.isdecimal() and digits[0] == "1" and digits[1] in "3456789"


def _windows(digits: str) -> list[tuple[int, int]]:
    """(start, end) of every window of `digits` that is an ID, a card or a mobile number."""
    hits = []
    n = len(digits)
    for start in range(n):
        for length in (11, 13, 14, 15, 16, 17, 18, 19):
            end = start + length
            if end > n:
                break
            window = digits[start:end]
            if (length == 18 and is_resident_id(window)) or (length == 11 and is_mobile(window)) \
                    or is_card_number(window):
                hits.append((start, end))
    return hits


def _mask_numbers(text: str, hide: bytearray) -> None:
    for match in _RUN.finditer(text):
        positions = [match.start() + i for i, ch in enumerate(match.group()) if ch not in _SEPARATORS]
        if len(positions) < 11:
            continue
        if len(positions) > _MAX_RUN_DIGITS:
            for pos in positions:
                hide[pos] = 1
            continue
        # Any script's decimal digits count (full-width "１３８..." is a mobile number too): compare as ASCII.
        digits = "".join(str(int(text[pos])) if text[pos].isdecimal() else text[pos] for pos in positions)
        for start, end in _windows(digits):
            for pos in positions[start + _KEEP_PREFIX:end - _KEEP_SUFFIX]:
                hide[pos] = 1


def _mask_emails(text: str, hide: bytearray) -> None:
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start < at and _EMAIL_DOMAIN.match(text, at + 1):
            # The first character stays readable, unless it is all there is ("a@example.com").
            for pos in range(start + 1 if at - start > 1 else start, at):
                hide[pos] = 1
        at = text.find("@", at + 1)


def mask_text(text: str, profile: str = "pii") -> str:
    """Free text with every ID, mobile, card number and e-mail address masked (`pii`), else unchanged."""
    if profile == "none" or not text:
        return text
    if profile not in PROFILES:
        raise ValueError("unknown masking profile")
    hide = bytearray(len(text))
    _mask_emails(text, hide)
    _mask_numbers(text, hide)
    if not any(hide):
        return text
    return "".join(STAR if flag else ch for ch, flag in zip(text, hide))


def mask_value(value: str, prefix: int | None = None, suffix: int | None = None) -> str:
    """A whole value masked like 110***********1234: a short prefix and suffix kept, stars between.

    Values of 11 characters or more keep 3 and 4 (138****5678); shorter ones keep at most 3 characters.
    """
    n = len(value)
    if prefix is None or suffix is None:
        prefix, suffix = ((_KEEP_PREFIX, _KEEP_SUFFIX) if n >= 11 else (1, 2) if n >= 8 else (1, 1) if n >= 5
                          else (1, 0) if n >= 2 else (0, 0))
    middle = "".join(ch if ch.isspace() else STAR for ch in value[prefix:n - suffix])
    return value[:prefix] + middle + value[n - suffix:] if n - suffix > prefix else STAR * n


def mask_name(value: str) -> str:
    """A person's name: only the first character is kept."""
    return mask_value(value, 1, 0) if len(value) >= 2 else STAR * len(value)


# --- columns ---------------------------------------------------------------------------------------------

NAME, IDENT = "name", "ident"
_NAME_WORDS = {"name", "names", "firstname", "lastname", "fullname", "surname", "givenname", "username",
               "nickname", "customer", "client", "contact", "person", "holder", "cardholder", "owner", "payee",
               "recipient"}
_IDENT_WORDS = {"id", "ids", "idno", "idnumber", "idcard", "identity", "identification", "ssn", "passport",
                "uid", "phone", "phones", "mobile", "tel", "telephone", "cell", "cellphone", "msisdn", "card",
                "cards", "cardno", "pan", "account", "accounts", "acct", "accountno", "iban", "email", "mail",
                "emails"}
_NAME_ZH = ("姓名", "名字", "客户名", "户名", "联系人", "收件人", "收货人", "持卡人", "姓")
_IDENT_ZH = ("身份证", "证件", "手机", "电话", "联系方式", "卡号", "银行卡", "账号", "帐号", "账户", "帐户",
             "邮箱", "电子邮件")
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def column_kind(header: str) -> str | None:
    """NAME or IDENT when a column header names a person's name, ID, phone, card or account; else None."""
    if any(word in header for word in _NAME_ZH):
        return NAME
    if any(word in header for word in _IDENT_ZH):
        return IDENT
    words = [w.lower() for w in _WORD.findall(header)]
    compact = "".join(words)
    if _IDENT_WORDS & set(words) or compact in _IDENT_WORDS:
        return IDENT
    if _NAME_WORDS & set(words) or compact in _NAME_WORDS:
        return NAME
    return None


def sensitive_columns(header: Sequence[str], profile: str = "pii") -> dict[int, str]:
    """Index → kind of every column the profile masks whole."""
    if profile == "none":
        return {}
    return {i: kind for i, h in enumerate(header) if (kind := column_kind(h)) is not None}


def mask_row(row: Sequence[str], columns: dict[int, str], profile: str = "pii") -> tuple[str, ...]:
    """One table row: whole-column masks where the header says so, free-text masking everywhere else."""
    if profile == "none":
        return tuple(row)
    return tuple(mask_name(cell) if columns.get(i) == NAME else mask_value(cell) if i in columns
                 else mask_text(cell, profile) for i, cell in enumerate(row))


def mask_json(document: object, profile: str = "pii", kind: str | None = None) -> object:
    """A parsed JSON document with values under sensitive keys masked whole (like sensitive columns), and
    free-text masking on every other string, key and number. A sensitive key masks everything below it."""
    if profile == "none":
        return document
    if isinstance(document, dict):
        return {mask_text(str(key), profile): mask_json(value, profile, kind or column_kind(str(key)))
                for key, value in document.items()}
    if isinstance(document, list):
        return [mask_json(item, profile, kind) for item in document]
    if isinstance(document, bool) or document is None:
        return document
    text = document if isinstance(document, str) else json.dumps(document)
    if kind == NAME:
        return mask_name(text)
    if kind is not None:
        return mask_value(text)
    masked = mask_text(text, profile)
    return document if masked == text else masked
