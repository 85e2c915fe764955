"""TOTP codes: one step of drift either way, digits only."""

import datetime as dt

import pyotp
import pytest

from bastion.auth.totp import matching_step, new_secret, provisioning_uri, qr_text

NOW = dt.datetime(2026, 11, 28, 12, 0, 10, tzinfo=dt.timezone.utc)


def test_current_and_adjacent_steps_match_and_return_their_step():
    secret = new_secret()
    totp = pyotp.TOTP(secret)
    step = int(NOW.timestamp()) // 30
    for offset in (-1, 0, 1):
        assert matching_step(secret, totp.at(NOW + dt.timedelta(seconds=30 * offset)), NOW) == step + offset


@pytest.mark.parametrize("offset", [-3, -2, 2, 3])
def test_codes_two_steps_away_do_not_match(offset):
    secret = new_secret()
    code = pyotp.TOTP(secret).at(NOW + dt.timedelta(seconds=30 * offset))
    if code in {pyotp.TOTP(secret).at(NOW + dt.timedelta(seconds=30 * o)) for o in (-1, 0, 1)}:
        pytest.skip("code collision across steps")
    assert matching_step(secret, code, NOW) is None


@pytest.mark.parametrize("garbage", ["", "12345", "1234567", "12a456", " " * 6, "\x00" * 6, "١٢٣٤٥٦", None])
def test_garbage_codes_do_not_match(garbage):
    assert matching_step(new_secret(), garbage, NOW) is None


def test_uri_and_qr():
    secret = new_secret()
    uri = provisioning_uri(secret, "alice", "Bastion")
    assert uri.startswith("otpauth://totp/Bastion:alice?") and f"secret={secret}" in uri
    assert "\u2588" in qr_text(uri)
