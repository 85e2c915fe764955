"""The console's table of real peers: found by transport, and closed connections do not pile up."""

from bastion.console.render import PeerTable


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed


def test_peers_are_found_by_transport_and_closed_ones_are_pruned():
    table = PeerTable()
    open_one = Transport()
    table.add(open_one, "10.0.0.1")
    for index in range(1000):
        transport = Transport()
        table.add(transport, f"10.0.1.{index}")
        transport.closed = True
    assert table.get(open_one) == "10.0.0.1"
    assert table.get(Transport()) is None
    assert len(table) < 130  # bounded by the connections still open, not by every one there ever was
