"""Legacy scp/rsync exec commands are transfers only when they carry no shell syntax."""

import pytest

from bastion.ssh.transfers import classify_exec


@pytest.mark.parametrize("command, direction, path", [
    ("scp -t /tmp/", "upload", "/tmp/"),
    ("scp -v -d -t -- /tmp/x", "upload", "/tmp/x"),
    ("scp -f /etc/hostname", "download", "/etc/hostname"),
])
def test_transfer_commands(command, direction, path):
    transfer = classify_exec(command)
    assert transfer is not None and (transfer.direction, transfer.path) == (direction, path)


@pytest.mark.parametrize("command", ["scp -t /tmp; rm -rf /", "scp -t /tmp && id", "scp -t $(id)", "scp -t `id`",
                                     "scp -t /a /b", "scp -t -f /x", "scp /x", "ls", "", "scp -t '/tmp'|sh",
                                     "rsync /a /b", "rsync --server -logDtpre.iLsfxCIvu . /tmp/dest",
                                     "rsync --server --sender --remove-source-files . /tmp/x", "scp -t -X /tmp",
                                     "scp -S /bin/sh -t /tmp"])
def test_anything_else_is_plain_exec(command):
    assert classify_exec(command) is None
