"""Device binding with real layer 2: client hosts in network namespaces with chosen MAC addresses."""

from __future__ import annotations

import pytest

from bastion.recordings import list_audit
from tests.support.clients import Login, ssh
from tests.support.gateway import GatewayProcess
from tests.support.netns import ClientHost, NetnsUnavailable
from tests.support.recordings import wait_for_sessions

APPROVED_MAC = "02:42:ac:11:00:02"
OTHER_MAC = "02:42:ac:11:00:99"
BANNERS = ["-o", "LogLevel=INFO"]


@pytest.fixture
def client_host(request):
    """A client on the bastion's own segment, and a gateway listening on that segment."""
    mac, ipv6 = getattr(request, "param", (APPROVED_MAC, False))
    try:
        host = ClientHost.create(mac, ipv6=ipv6)
    except NetnsUnavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")
    yield host
    host.close()


@pytest.fixture
def segment_gateway(testbed, client_host):
    gateway = GatewayProcess(testbed.data_dir)
    gateway.host = client_host.host_ip
    gateway.start()
    yield gateway
    gateway.stop()


def from_client(client_host, gateway, login: Login, spec: str, *command: str, extra=None):
    return ssh(gateway.port, login, spec, *command, host=client_host.host_ip, prefix=client_host.prefix(),
               extra=extra)


def user_with_device(testbed, macs=(), key=False, approve=True, policy="required"):
    alice = testbed.user("exec", key=key)
    device = testbed.admin().add_device(alice.name, "laptop", macs,
                                        ssh_key=alice.key.with_suffix(".pub").read_text() if key else None)
    if approve:
        testbed.admin().set_device_status(device["id"], "approved")
    testbed.admin().set_user_policy(alice.name, policy)
    return alice, device


@pytest.mark.parametrize("client_host", [(APPROVED_MAC, False), (APPROVED_MAC, True)], indirect=True,
                         ids=["ipv4", "ipv6"])
def test_required_policy_allows_the_approved_mac_on_the_segment(testbed, client_host, segment_gateway):
    alice, device = user_with_device(testbed, [APPROVED_MAC])
    result = from_client(client_host, segment_gateway, alice, f"{alice.name}:web01", "echo on-device")
    assert result.returncode == 0, result.stderr
    session = wait_for_sessions(testbed, alice.name)[0]
    assert session["device_id"] == device["id"] and session["device_proof"] == "mac"


@pytest.mark.parametrize("client_host", [(OTHER_MAC, False), (OTHER_MAC, True)], indirect=True,
                         ids=["ipv4", "ipv6"])
def test_required_policy_refuses_an_unknown_mac_and_names_the_missing_binding(testbed, client_host,
                                                                              segment_gateway):
    alice, _ = user_with_device(testbed, [APPROVED_MAC])
    result = from_client(client_host, segment_gateway, alice, f"{alice.name}:web01", "echo should-not-run",
                         extra=BANNERS)
    assert result.returncode == 255 and b"should-not-run" not in result.stdout
    assert b"bound device" in result.stderr


def test_required_policy_refuses_a_pending_or_revoked_device(testbed, client_host, segment_gateway):
    alice, device = user_with_device(testbed, [APPROVED_MAC], approve=False)
    assert from_client(client_host, segment_gateway, alice, f"{alice.name}:web01", "true").returncode == 255
    testbed.admin().set_device_status(device["id"], "approved")
    assert from_client(client_host, segment_gateway, alice, f"{alice.name}:web01", "true").returncode == 0
    testbed.admin().set_device_status(device["id"], "revoked")
    assert from_client(client_host, segment_gateway, alice, f"{alice.name}:web01", "true").returncode == 255


@pytest.mark.parametrize("client_host", [(OTHER_MAC, False)], indirect=True)
def test_advisory_policy_allows_and_audits_an_unbound_connection(testbed, client_host, segment_gateway):
    alice, _ = user_with_device(testbed, [APPROVED_MAC], policy="advisory")
    result = from_client(client_host, segment_gateway, alice, f"{alice.name}:web01", "echo allowed")
    assert result.returncode == 0, result.stderr
    events = [e for e in testbed.directory.call(lambda s: list_audit(s, "device.", 200, "test"))
              if e["actor"] == alice.name]
    assert events and events[0]["details"]["mac"] == OTHER_MAC


def test_device_key_proves_the_device_from_anywhere(testbed):
    alice, device = user_with_device(testbed, key=True)
    result = ssh(testbed.port, Login(alice.name, key=alice.key), f"{alice.name}:web01", "true")
    assert result.returncode == 0, result.stderr
    session = wait_for_sessions(testbed, alice.name)[0]
    assert session["device_proof"] == "device-key" and session["device_id"] == device["id"]
    refused = ssh(testbed.port, Login(alice.name, password=alice.password), f"{alice.name}:web01", "true",
                  extra=BANNERS)  # password only: no device
    assert refused.returncode == 255 and b"bound device" in refused.stderr


def test_group_and_target_policies_apply_too(testbed):
    target = testbed.target("devreq", device_policy="required")
    alice = testbed.user("exec", target=target)
    assert ssh(testbed.port, alice, f"{alice.name}:{target}", "true").returncode == 255
    bob = testbed.user("exec")
    testbed.admin().add_user(f"{bob.name}x", password="another-long-pass-123", groups=["ops-" + testbed.backend])
    testbed.admin().add_grant(group="ops-" + testbed.backend, target="web01", account="root", actions=["exec"])
    testbed.admin().set_group_policy("ops-" + testbed.backend, "required")
    member = Login(f"{bob.name}x", password="another-long-pass-123")
    assert ssh(testbed.port, member, f"{member.name}:web01", "true").returncode == 255
    testbed.admin().set_group_policy("ops-" + testbed.backend, "off")
    assert ssh(testbed.port, member, f"{member.name}:web01", "true").returncode == 0
