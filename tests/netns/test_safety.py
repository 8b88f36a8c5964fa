"""Never two owners (issue 7, section 2; docs/safety.md), with the real daemons in the lab.

* The firewalled secondary: failoverd starts while S drops heartbeat-port UDP (nftables in S's
  namespace). The primary is alive and its address answers ARP, so S must take nothing, and
  ``ipfailover status`` must say why, naming the MAC that answers. Without the probe, S took
  the live primary's address one dead time after start.
* A primary verified, then silent while its address still answers: S takes over (Apple's way),
  and when the old primary announces the address again S reports the conflict and defends.
"""

from __future__ import annotations

import subprocess
import sys
import time

from test_failover import (
    FAST,
    PRIMARY,
    SECONDARY,
    SERVICE,
    SETUP_TIMEOUT,
    SLACK,
    StartClient,
    StartDaemon,
    addresses,
    answers,
    link_mac,
    neighbour_mac,
    wait_verified,
)
from test_operations import status, status_json

from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import SERVICE_V4, Network, Node

BOTH = (Network.PUBLIC, Network.PRIVATE)


def firewall(lab: Lab, node: Node, drop: bool) -> None:
    """Drop (or pass again) heartbeat-port UDP on both of a node's networks."""
    for network in BOTH:
        lab.partition(node, network, drop=drop)


def test_a_firewalled_secondary_takes_nothing_and_status_says_why(
    lab: Lab, start_daemon: StartDaemon, start_client: StartClient
) -> None:
    firewall(lab, Node.SECONDARY, drop=True)  # the most common mistake
    heartbeatd = start_daemon(Node.PRIMARY, "heartbeatd", **FAST.overrides())
    heartbeatd.wait_event("start", SETUP_TIMEOUT)
    failoverd = start_daemon(Node.SECONDARY, "failoverd", **FAST.overrides())
    started = failoverd.wait_event("start", SETUP_TIMEOUT).t
    client = start_client(SERVICE_V4)
    primary_mac = link_mac(lab, Node.PRIMARY)

    blocked = failoverd.wait_event("takeover-blocked", FAST.deadtime + SLACK, since=started)
    assert set(blocked.fields["answering"].split()) == {f"{ip}={primary_mac}" for ip in SERVICE}
    assert "no heartbeat was ever verified" in blocked.fields["why"]
    time.sleep(max(0.0, started + 3 * FAST.deadtime - time.monotonic()))

    # after three dead times: nothing taken, the primary still answers its clients
    assert failoverd.find_event("acquire-start") is None, failoverd.tail()
    assert not addresses(lab, Node.SECONDARY) & set(SERVICE)
    assert set(answers(client, started + 0.5)) == {PRIMARY}
    assert neighbour_mac(lab, Node.CLIENT, SERVICE_V4) == primary_mac
    d = status_json(lab, Node.SECONDARY)
    assert d["state"] == "blocked" and d["holding"] is False
    assert d["peer"]["verified"] is False
    assert "check the firewall, key, port and FAILOVER_PEER_IP" in d["blocked"]["why"]
    assert {(x["address"], tuple(x["macs"])) for x in d["blocked"]["answering"]} == {
        (SERVICE_V4, (primary_mac,)),
        (SERVICE[1], (primary_mac,)),
    }
    table = status(lab, Node.SECONDARY).stdout
    assert "BLOCKED" in table and "NOT TAKING OVER" in table and primary_mac in table
    probes = failoverd.events("probe-error")
    assert probes == []

    # the firewall is fixed: the primary is verified, and a real failure is still taken over
    opened = time.monotonic()
    firewall(lab, Node.SECONDARY, drop=False)
    wait_verified(failoverd, PRIMARY)
    failoverd.wait_event("takeover-unblocked", SETUP_TIMEOUT, since=opened)
    assert status_json(lab, Node.SECONDARY)["state"] == "standby"
    pulled = time.monotonic()
    for network in BOTH:
        lab.cable(Node.PRIMARY, network, up=False)
    failoverd.wait_event("acquire-done", FAST.deadtime + SLACK, since=pulled)
    assert client.wait_first(SECONDARY, pulled, FAST.deadtime + SLACK) is not None


def announce_from(lab: Lab, node: Node, address: str) -> None:
    """The old primary re-announces its address (one gratuitous ARP), as a hung host might."""
    code = (
        "import asyncio, ipaddress\n"
        "from ipfailover.shell import announce, netif\n"
        "async def main():\n"
        f"    a = await netif.resolve('pub0', ipaddress.ip_address('{address}'), None)\n"
        "    assert await announce.announce(a, 1, 0.0) == 1\n"
        "asyncio.run(main())\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", lab.ns(node), sys.executable, "-c", code], check=True, timeout=30
    )


def test_verified_then_silent_is_taken_over_and_a_conflict_is_reported_and_defended(
    lab: Lab, start_daemon: StartDaemon, start_client: StartClient
) -> None:
    heartbeatd = start_daemon(Node.PRIMARY, "heartbeatd", **FAST.overrides())
    failoverd = start_daemon(Node.SECONDARY, "failoverd", **FAST.overrides())
    client = start_client(SERVICE_V4)
    wait_verified(failoverd, PRIMARY)
    primary_mac = link_mac(lab, Node.PRIMARY)

    # heartbeats blocked mid-life: the primary's address still answers
    cut = time.monotonic()
    firewall(lab, Node.SECONDARY, drop=True)
    said = failoverd.wait_event("address-answers", FAST.deadtime + SLACK, since=cut)
    assert said.fields["action"] == "taking-over" and primary_mac in said.fields["answering"]
    failoverd.wait_event("acquire-done", SLACK, since=cut)
    assert set(SERVICE) <= addresses(lab, Node.SECONDARY)
    d = status_json(lab, Node.SECONDARY)
    assert d["probe"]["result"] == "answered" and d["peer"]["verified"] is True
    assert heartbeatd.poll() is None

    # the old primary announces its address: S reports it once and defends at once
    claimed = time.monotonic()
    announce_from(lab, Node.PRIMARY, SERVICE_V4)
    conflict = failoverd.wait_event("address-conflict", SLACK, since=claimed)
    assert conflict.fields["address"] == SERVICE_V4 and conflict.fields["mac"] == primary_mac
    failoverd.wait_event("address-defended", SLACK, since=claimed)
    time.sleep(0.3)
    assert neighbour_mac(lab, Node.CLIENT, SERVICE_V4) == link_mac(lab, Node.SECONDARY)
    (episode,) = status_json(lab, Node.SECONDARY)["conflicts"]
    assert episode["macs"] == [primary_mac] and episode["defences"] == 1
    # within DEFEND_INTERVAL: a second claim is neither reported again nor defended again
    again = time.monotonic()
    announce_from(lab, Node.PRIMARY, SERVICE_V4)
    time.sleep(0.5)
    assert failoverd.find_event("address-conflict", since=again) is None
    assert failoverd.find_event("address-defended", since=again) is None
    assert status_json(lab, Node.SECONDARY)["conflicts"][0]["frames"] == 2
    assert client.process.poll() is None
