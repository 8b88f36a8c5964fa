"""Peering with unicast heartbeats: while the primary holds its peer's public address, its
heartbeats to that address must still leave the host (issue 11: the peer's failoverd raised a
false anomaly for the public network, and `recovered` 2.5 s later)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ipfailover.lab.processes import LabProcess
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import LabTimeout, Network, Node, sh

PEER_PUBLIC = "203.0.113.20"  # the secondary's public address, a unicast heartbeat target


def test_heartbeats_to_a_held_target_go_to_the_link(
    lab: Lab, start_daemon: Callable[..., LabProcess]
) -> None:
    heartbeatd = start_daemon(
        Node.PRIMARY,
        "heartbeatd",
        FAILOVER_INTERVAL=0.2,
        FAILOVER_BCAST_IPS=f"{PEER_PUBLIC} 198.51.100.255",
    )
    failoverd = start_daemon(Node.SECONDARY, "failoverd", FAILOVER_INTERVAL=0.2)
    for network in (Network.PUBLIC, Network.PRIVATE):
        failoverd.wait_event("peer-verified", 15.0, network=network.value)
    # The primary now holds the secondary's public address, as after a peering takeover.
    held = time.monotonic()
    sh(["ip", "-n", lab.ns(Node.PRIMARY), "addr", "add", f"{PEER_PUBLIC}/24", "dev", "pub0"])
    line = heartbeatd.wait_event("target-held", 5.0, since=held, target=PEER_PUBLIC)
    assert line.fields["via"] == "203.0.113.255"
    with pytest.raises(LabTimeout):  # 3 s = 5 dead times of the secondary: nothing to report
        failoverd.wait_event("anomaly", 3.0, since=held)
    sh(["ip", "-n", lab.ns(Node.PRIMARY), "addr", "del", f"{PEER_PUBLIC}/24", "dev", "pub0"])
    heartbeatd.wait_event("target-released", 5.0, since=held, target=PEER_PUBLIC)
    with pytest.raises(LabTimeout):
        failoverd.wait_event("anomaly", 2.0, since=held)
