"""Every `peer-verified` line names the peer, the first one too (issue 11)."""

from __future__ import annotations

from collections.abc import Callable

from ipfailover.lab.processes import LabProcess
from ipfailover.lab.topology import NODE_NAMES, Network, Node

PRIMARY = NODE_NAMES[Node.PRIMARY]


def test_every_peer_verified_line_has_peer(start_daemon: Callable[..., LabProcess]) -> None:
    start_daemon(Node.PRIMARY, "heartbeatd", FAILOVER_INTERVAL=0.1)
    # FAILOVER_PEER_IP names no address the primary sends from, so no heartbeat pins the peer's
    # name: the network verified first used to be logged without peer= (and here, both were).
    failoverd = start_daemon(
        Node.SECONDARY, "failoverd", FAILOVER_INTERVAL=0.1, FAILOVER_PEER_IP="203.0.113.99"
    )
    for network in (Network.PUBLIC, Network.PRIVATE):
        failoverd.wait_event("peer-verified", 15.0, network=network.value)
    lines = failoverd.events("peer-verified")
    assert len(lines) == 2
    assert [ln.fields.get("peer") for ln in lines] == [PRIMARY, PRIMARY], lines
