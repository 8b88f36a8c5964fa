"""accept_local is turned on only where failoverd needs it, and put back when it stops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Node, sh


def accept_local(lab: Lab, ifname: str) -> str:
    path = f"/proc/sys/net/ipv4/conf/{ifname}/accept_local"
    return sh(["ip", "netns", "exec", lab.ns(Node.SECONDARY), "cat", path]).strip()


def test_accept_local_only_on_the_pairs_interface_and_put_back_on_stop(
    lab: Lab, start_daemon: Callable[..., Any]
) -> None:
    assert accept_local(lab, "pub0") == "0" and accept_local(lab, "priv0") == "0"
    failoverd = start_daemon(Node.SECONDARY, "failoverd")
    failoverd.wait_event("start", 15.0)
    assert accept_local(lab, "pub0") == "1"  # the pair's interface: the held address lives there
    assert accept_local(lab, "priv0") == "0"  # a watched network with no pair: not needed
    assert failoverd.stop() == 0
    assert accept_local(lab, "pub0") == "0"  # as it was before failoverd
