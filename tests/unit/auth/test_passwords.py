"""Password policy and hashing."""

import pytest

from bastion.auth.passwords import WeakPassword, check_policy, hash_password, verify_password


@pytest.mark.parametrize("weak", ["short", "password1234", "qwertyuiop123", "aaaaaaaaaaaa", "alicealice12",
                                  "x" * 1025, "tab\there-is-long"])
def test_weak_passwords_are_refused_with_a_reason(weak):
    with pytest.raises(WeakPassword) as info:
        check_policy(weak, ("alice",))
    assert info.value.safe_message and weak not in info.value.safe_message


def test_hash_is_argon2id_and_verifies():
    stored = hash_password("correct-horse-battery-staple")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct-horse-battery-staple")
    assert not verify_password(stored, "correct-horse-battery-stapler")
    assert not verify_password(None, "correct-horse-battery-staple")
    assert not verify_password("not-a-hash", "anything")
