"""Master key handling and envelope encryption."""

import os

import pytest

from bastion.errors import VaultError
from bastion.vault import Vault, create_master_key


def test_seal_open_round_trip_and_context_binding(tmp_path):
    create_master_key(tmp_path)
    vault = Vault.load(tmp_path)
    sealed = vault.seal(b"target secret", "target-account:1:root")
    assert b"target secret" not in sealed
    assert vault.open(sealed, "target-account:1:root") == b"target secret"
    with pytest.raises(VaultError):
        vault.open(sealed, "target-account:2:root")


def test_each_seal_uses_a_fresh_data_key(tmp_path):
    create_master_key(tmp_path)
    vault = Vault.load(tmp_path)
    assert vault.seal(b"x", "c") != vault.seal(b"x", "c")


def test_tampered_or_garbage_sealed_secret_is_refused(tmp_path):
    create_master_key(tmp_path)
    vault = Vault.load(tmp_path)
    sealed = bytearray(vault.seal(b"secret", "c"))
    sealed[-1] ^= 1
    for bad in (bytes(sealed), b"", b"\x01" * 10, os.urandom(200)):
        with pytest.raises(VaultError) as info:
            vault.open(bad, "c")
        assert "secret" not in info.value.safe_message.replace("sealed secret", "")


def test_master_key_is_private_and_never_overwritten(tmp_path):
    path = create_master_key(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_master_key(tmp_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_readable_master_key_is_refused(tmp_path, mode):
    path = create_master_key(tmp_path)
    path.chmod(mode)
    with pytest.raises(VaultError, match="group or others"):
        Vault.load(tmp_path)


def test_other_master_key_cannot_open(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    create_master_key(tmp_path / "a")
    create_master_key(tmp_path / "b")
    sealed = Vault.load(tmp_path / "a").seal(b"s", "c")
    with pytest.raises(VaultError):
        Vault.load(tmp_path / "b").open(sealed, "c")
