"""Levels from factors."""

import pytest

from bastion.auth.levels import level_of


@pytest.mark.parametrize("factors, level", [
    ([], 0), (["password"], 1), (["publickey"], 1), (["sk"], 1), (["sk-uv"], 1), (["totp"], 1),
    (["password", "totp"], 2), (["publickey", "sk"], 2), (["password", "sk-uv"], 3), (["publickey", "sk-uv"], 3),
    (["password", "totp", "sk-uv"], 3), (["password", "publickey"], 1), (["totp", "sk"], 1),
])
def test_level_of(factors, level):
    assert level_of(factors) == level
