"""The algorithm policy's option builders."""

from __future__ import annotations

import pytest

from bastion.ssh_algorithms import CIPHERS, server_algorithm_options


def test_the_server_offers_every_allowed_cipher_by_default_and_a_selection_when_given():
    assert server_algorithm_options()["encryption_algs"] == list(CIPHERS)
    chosen = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com")
    assert server_algorithm_options(ciphers=chosen)["encryption_algs"] == list(chosen)


@pytest.mark.parametrize("ciphers", [(), ("3des-cbc",), ("aes128-gcm@openssh.com", "aes128-cbc"), ("none",)])
def test_a_cipher_outside_the_policy_is_refused_even_past_the_config_check(ciphers):
    with pytest.raises(ValueError):
        server_algorithm_options(ciphers=ciphers)
