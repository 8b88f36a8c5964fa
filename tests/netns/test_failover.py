"""End-to-end failover: the real heartbeatd and failoverd in the namespace lab (issue 2, item 11).

heartbeatd runs on the primary (P), failoverd on the secondary (S), and a probe client on the
client node (C) asks every 10 ms who answers the service address 203.0.113.10 (the primary's own
public address, Apple's model).  Faults are real: a pulled cable is the switch-side veth set down,
a partition is an nftables drop of heartbeat-port UDP, a stop is a signal to the daemon's PID.

Each test checks what a user would see (who answers, what ``ip addr`` shows on S) and what the
daemons log (``event=...`` lines).  Most tests use short timings to keep the suite fast; the
product's defaults (1 s interval, 3 s dead time, 3 s hold-down) are used where the issue names them.
Time bounds are the protocol's bound plus ``SLACK`` for scheduling, netlink and ARP; a re-plugged
cable may take the kernel's linkwatch up to ``LINKWATCH`` to carry traffic again.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from ipfailover.core import auth, wire
from ipfailover.lab.processes import LabProcess, ProbeMonitor, write_key
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import (
    ADDRESSES,
    BROADCASTS,
    HEARTBEAT_PORT,
    NODE_NAMES,
    SERVICE_V4,
    SERVICE_V6,
    Network,
    Node,
    sh,
)

StartDaemon = Callable[..., LabProcess]
StartClient = Callable[..., ProbeMonitor]

PRIMARY = NODE_NAMES[Node.PRIMARY]
SECONDARY = NODE_NAMES[Node.SECONDARY]
SERVICE = (SERVICE_V4, SERVICE_V6)  # what S takes over: the lab's FAILOVER_PEER_IP_PAIRS
S_OWN_V4 = "203.0.113.20"  # the secondary's own public address (the second service in peering)
CLIENT_V4 = "203.0.113.100"
BOTH = (Network.PUBLIC, Network.PRIVATE)

SLACK = 1.0
"""Seconds allowed on top of a protocol bound: process scheduling, netlink, GARP, probe timing."""
LINKWATCH = 1.0
"""The kernel passes a re-plugged cable's carrier on within about a second (linkwatch)."""
SETUP_TIMEOUT = 15.0
"""Bound on daemons starting and verifying each other."""


@dataclass(frozen=True)
class Timing:
    """The timing settings of one test, written into both nodes' hostconfig."""

    interval: float
    deadtime: float
    failback_delay: float
    defaults: bool = False  # leave the variables unset, so the daemons use their own defaults

    def overrides(self) -> dict[str, Any]:
        values = {
            "FAILOVER_INTERVAL": self.interval,
            "FAILOVER_DEADTIME": self.deadtime,
            "FAILOVER_FAILBACK_DELAY": self.failback_delay,
        }
        return {name: None if self.defaults else value for name, value in values.items()}


FAST = Timing(interval=0.2, deadtime=0.8, failback_delay=1.0)
DEFAULTS = Timing(interval=1.0, deadtime=3.0, failback_delay=3.0, defaults=True)
"""The documented defaults (docs/configuration.md); the tests check failoverd reports them."""


# --- inspecting the namespaces ---------------------------------------------------------------


def ip_json(lab: Lab, node: Node, *args: str) -> list[dict[str, Any]]:
    """``ip -j`` output in a node's namespace."""
    result: list[dict[str, Any]] = json.loads(sh(["ip", "-j", "-n", lab.ns(node), *args]))
    return result


def addresses(lab: Lab, node: Node, dev: str = Network.PUBLIC.value) -> set[str]:
    """The addresses on one interface of a node, as ``ip addr`` shows them."""
    links = ip_json(lab, node, "addr", "show", "dev", dev)
    return {str(a["local"]) for link in links for a in link.get("addr_info", [])}


def link_mac(lab: Lab, node: Node, dev: str = Network.PUBLIC.value) -> str:
    return str(ip_json(lab, node, "link", "show", "dev", dev)[0]["address"])


def neighbour_mac(lab: Lab, node: Node, address: str) -> str | None:
    """The link-layer address a node's neighbour table has for address, if any."""
    entries = ip_json(lab, node, "neigh", "show", "to", address)
    return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None


def watch_addresses(lab: Lab, nodes: Sequence[Node], seconds: float) -> list[dict[Node, set[str]]]:
    """Sample the public addresses of nodes every 50 ms for seconds (bounded in time)."""
    samples: list[dict[Node, set[str]]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append({node: addresses(lab, node) for node in nodes})
        time.sleep(0.05)
    return samples


class AddressMonitor:
    """``ip -o monitor address`` in a node: every address added or deleted there, as it happens.

    Polling can miss a blip of a few milliseconds; the kernel's notifications cannot.  A canary
    address (added and deleted on lo) proves the monitor is listening before the test goes on.
    """

    CANARY = "192.0.2.1"

    def __init__(self, lab: Lab, node: Node) -> None:
        self.proc = lab.spawn(node, ["ip", "-o", "monitor", "address"], "ip-monitor")
        ns = lab.ns(node)
        deadline = time.monotonic() + 10.0
        while not self.lines(self.CANARY):
            assert time.monotonic() < deadline, "ip monitor never reported the canary address"
            sh(["ip", "-n", ns, "addr", "replace", f"{self.CANARY}/32", "dev", "lo"])
            time.sleep(0.05)
        sh(["ip", "-n", ns, "addr", "del", f"{self.CANARY}/32", "dev", "lo"])

    def lines(self, address: str) -> list[str]:
        """Every notification about address so far (added, or ``Deleted ...``)."""
        needle = f" {address}/"
        return [ln.text for ln in self.proc.lines if needle in ln.text]


def answers(client: ProbeMonitor, start: float, end: float | None = None) -> Counter[str | None]:
    """Who answered the client's probes sent in [start, end]; end defaults to the last resolved.

    A probe's outcome is known only a reply timeout after it was sent, so this first waits until
    every probe sent up to end has resolved.
    """
    now = time.monotonic()
    end = now - client.reply_timeout if end is None else end
    if end <= start:
        raise ValueError(f"empty probe window: start {start:.3f} is not before end {end:.3f}")
    time.sleep(max(0.0, end + client.reply_timeout + 0.1 - now))
    return client.who_answers(start, end)


# --- the failover pair -----------------------------------------------------------------------


@dataclass
class Pair:
    """heartbeatd on P, failoverd on S and a probe client on C, verified and answered."""

    lab: Lab
    timing: Timing
    heartbeatd: LabProcess
    failoverd: LabProcess
    client: ProbeMonitor

    def cables(self, up: bool, *networks: Network) -> float:
        """Plug or pull the primary's cables; returns the time just before the first one."""
        before = time.monotonic()
        for network in networks:
            self.lab.cable(Node.PRIMARY, network, up=up)
        return before

    def failover(self) -> float:
        """Pull both of the primary's cables and wait until the secondary answers."""
        pulled = self.cables(False, *BOTH)
        bound = self.timing.deadtime + SLACK
        probe = self.client.wait_first(SECONDARY, pulled, bound)
        assert probe is not None, (
            f"secondary did not answer within {bound}s\n{self.failoverd.tail()}"
        )
        return pulled

    def failback(self, since: float, timeout: float) -> None:
        """After the primary is back: S releases, P re-announces, the client comes home."""
        done = self.failoverd.wait_event("release-done", timeout, since=since, reason="peer-heard")
        assert not addresses(self.lab, Node.SECONDARY) & set(SERVICE)
        self.heartbeatd.wait_event(
            "announce", SLACK, since=since, reason="released", listener=SECONDARY
        )
        home = self.client.wait_settled(PRIMARY, done.t, timeout=5.0, quiet=1.0)
        assert home is not None, "the client did not come home to the primary"
        assert home.sent - done.t < SLACK


def wait_verified(failoverd: LabProcess, peer: str, timeout: float = SETUP_TIMEOUT) -> None:
    """failoverd verified its primary on both networks (it answered our challenges)."""
    for network in BOTH:
        failoverd.wait_event("peer-verified", timeout, network=network.value, peer=peer)


@pytest.fixture
def start_pair(
    start_daemon: StartDaemon, start_client: StartClient, lab: Lab
) -> Callable[..., Pair]:
    """Factory: start heartbeatd on P and failoverd on S with a timing, plus a probe client."""

    def start(timing: Timing = FAST, target: str = SERVICE_V4) -> Pair:
        heartbeatd = start_daemon(Node.PRIMARY, "heartbeatd", **timing.overrides())
        failoverd = start_daemon(Node.SECONDARY, "failoverd", **timing.overrides())
        began = time.monotonic()
        client = start_client(target)
        started = failoverd.wait_event("start", SETUP_TIMEOUT)
        assert float(started.fields["deadtime"]) == pytest.approx(timing.deadtime)
        wait_verified(failoverd, PRIMARY)
        assert client.wait_first(PRIMARY, began, SETUP_TIMEOUT) is not None
        return Pair(lab, timing, heartbeatd, failoverd, client)

    return start


# --- 1. failover -------------------------------------------------------------------------------


@pytest.mark.parametrize("timing", [FAST, DEFAULTS], ids=["fast", "defaults-1s"])
def test_failover_when_both_cables_are_pulled(
    start_pair: Callable[..., Pair], timing: Timing
) -> None:
    pair = start_pair(timing)
    lab = pair.lab
    pulled = pair.failover()
    probe = pair.client.first(SECONDARY, pulled)
    assert probe is not None and probe.sent - pulled <= timing.deadtime + SLACK
    # it waited out the dead time: the last heartbeat was at most one interval before the pull,
    # and the life it proved may date from up to one more interval before its arrival (a
    # heartbeat proves life only since the challenge it echoes: docs/protocol.md, Freshness)
    acquired = pair.failoverd.wait_event("acquire-start", SLACK, since=pulled, reason="peer-silent")
    assert acquired.t - pulled >= timing.deadtime - 2 * timing.interval - 0.1
    pair.failoverd.wait_event("acquire-done", SLACK, since=pulled)
    assert set(SERVICE) <= addresses(lab, Node.SECONDARY)
    # the client switched because of the gratuitous ARP: its cache now names S's MAC
    assert neighbour_mac(lab, Node.CLIENT, SERVICE_V4) == link_mac(lab, Node.SECONDARY)


# --- 2. one network lost: anomaly, no takeover -------------------------------------------------


@pytest.mark.parametrize(
    ("network", "how"),
    [(Network.PUBLIC, "cable"), (Network.PRIVATE, "cable"), (Network.PRIVATE, "partition")],
    ids=["public-cable", "private-cable", "private-partition"],
)
def test_no_takeover_when_only_one_network_is_lost(
    start_pair: Callable[..., Pair], network: Network, how: str
) -> None:
    pair = start_pair(FAST)
    lab, failoverd = pair.lab, pair.failoverd
    monitor = AddressMonitor(lab, Node.SECONDARY)

    def fault(on: bool) -> float:
        before = time.monotonic()
        if how == "cable":
            lab.cable(Node.PRIMARY, network, up=not on)
        else:
            lab.partition(Node.PRIMARY, network, drop=on)
        return before

    lost = fault(True)
    held = watch_addresses(lab, [Node.SECONDARY], 3 * FAST.deadtime)
    assert len(held) >= 10
    assert not any(s[Node.SECONDARY] & set(SERVICE) for s in held)
    assert monitor.lines(SERVICE_V4) == [] and monitor.lines(SERVICE_V6) == []
    assert failoverd.find_event("acquire-start", since=lost) is None
    anomaly = failoverd.wait_event("anomaly", SLACK, since=lost, network=network.value)
    assert anomaly.t - lost >= FAST.deadtime - FAST.interval - 0.1
    other = next(n for n in BOTH if n is not network)
    assert failoverd.find_event("anomaly", since=lost, network=other.value) is None
    seen = answers(pair.client, lost)
    assert seen[SECONDARY] == 0
    if network is Network.PRIVATE:  # the public side is untouched: P serves throughout
        assert set(seen) == {PRIMARY}

    restored = fault(False)
    failoverd.wait_event(
        "recovered", LINKWATCH + FAST.interval + SLACK, since=restored, network=network.value
    )
    time.sleep(FAST.deadtime)
    assert failoverd.find_event("acquire-start", since=lost) is None
    assert monitor.lines(SERVICE_V4) == []
    assert pair.client.wait_settled(PRIMARY, restored, LINKWATCH + 2 * SLACK, quiet=0.5)


# --- 3. failback -------------------------------------------------------------------------------


def test_failback_after_both_cables_return(start_pair: Callable[..., Pair]) -> None:
    pair = start_pair(FAST)
    failoverd = pair.failoverd
    pair.failover()
    restored = pair.cables(True, *BOTH)
    holddown = failoverd.wait_event(
        "holddown-start", LINKWATCH + FAST.interval + SLACK, since=restored
    )
    assert set(SERVICE) <= addresses(pair.lab, Node.SECONDARY)  # still held during the hold-down
    release = failoverd.wait_event(
        "release-start", FAST.failback_delay + SLACK, since=restored, reason="peer-heard"
    )
    assert release.t - holddown.t >= FAST.failback_delay - 0.05
    pair.failback(restored, SLACK)


@pytest.mark.parametrize(
    "timing",
    [Timing(interval=1.0, deadtime=3.0, failback_delay=1.0), Timing(0.1, 0.3, 1.0)],
    ids=["1s", "0.1s"],
)
def test_failback_loses_no_probe(start_pair: Callable[..., Pair], timing: Timing) -> None:
    """Make before break (issue 10): the primary announces, confirms, and only then does the
    secondary delete; a client probing every 10 ms loses nothing on the way home. Before, the
    secondary deleted first and the primary announced after RELEASED: 1-3 probes lost."""
    pair = start_pair(timing)
    pair.failover()
    restored = pair.cables(True, *BOTH)
    bound = LINKWATCH + timing.interval + timing.failback_delay + SLACK
    done = pair.failoverd.wait_event("release-done", bound, since=restored, reason="peer-heard")
    announced = pair.heartbeatd.wait_event("announce", SLACK, since=restored, reason="handback")
    assert pair.failoverd.find_event("state", since=restored, trigger="announced") is not None
    assert announced.t <= done.t
    home = pair.client.wait_settled(PRIMARY, restored, timeout=5.0, quiet=1.0)
    assert home is not None, "the client did not come home to the primary"
    seen = answers(pair.client, restored, home.sent + 0.5)
    assert seen[None] == 0, f"probes lost on failback: {seen}"
    assert set(seen) == {PRIMARY, SECONDARY}


CUT = Timing(interval=0.5, deadtime=3.0, failback_delay=1.0)
"""A dead time six times the 0.5 s cuts below: only the cut-off flag can take them over."""


def cut_primary(pair: Pair, networks: Sequence[Network], seconds: float) -> tuple[float, float]:
    """Pull the primary's cables on ``networks`` for ``seconds`` once heartbeatd watches its
    links (after its start-up announcement); returns (pulled, restored)."""
    pair.heartbeatd.wait_event("announce", SETUP_TIMEOUT, reason="start")
    time.sleep(0.5)  # its link watch subscribes alongside the announcement
    pulled = pair.cables(False, *networks)
    time.sleep(seconds)
    return pulled, pair.cables(True, *networks)


def test_a_primary_cut_off_on_both_networks_is_taken_over_as_its_cables_return(
    start_pair: Callable[..., Pair],
) -> None:
    """Issue 8 case 3: a cut shorter than the dead time (0.5 s against 3 s) made no takeover, so
    a cable that flapped at about the dead time cost the clients every cut. heartbeatd now sees
    every carrier go (event=cut-off), flags its next heartbeats, and the secondary takes over
    on the first fresh one (peer-cut-off), then hands back after a steady hold-down."""
    pair = start_pair(CUT)
    pulled, restored = cut_primary(pair, BOTH, 0.5)
    cut = pair.heartbeatd.wait_event("cut-off", SLACK, since=pulled)
    assert cut.t < restored
    acquired = pair.failoverd.wait_event(
        "acquire-start", LINKWATCH + 2 * CUT.interval + SLACK, since=restored, reason="peer-cut-off"
    )
    assert acquired.t - pulled < CUT.deadtime  # not the silence
    assert pair.client.wait_first(SECONDARY, restored, LINKWATCH + SLACK + 1.0) is not None
    bound = LINKWATCH + CUT.failback_delay + 4 * CUT.interval + SLACK
    done = pair.failoverd.wait_event("release-done", bound, since=acquired.t, reason="peer-heard")
    # one hold-down: the flagged heartbeats of the one cut are one report
    assert len(pair.failoverd.events("holddown-start", since=acquired.t)) == 1
    home = pair.client.wait_settled(PRIMARY, done.t, timeout=5.0, quiet=1.0)
    assert home is not None, "the client did not come home to the primary"


def test_one_cable_out_is_no_cut(start_pair: Callable[..., Pair]) -> None:
    """The public cable alone out for 0.5 s: the private network still carries heartbeats, so
    heartbeatd is not cut off, and nothing is taken over (Apple's one-network rule)."""
    pair = start_pair(CUT)
    pulled, restored = cut_primary(pair, [Network.PUBLIC], 0.5)
    pair.heartbeatd.wait_event("link-up", LINKWATCH + SLACK, since=restored)
    time.sleep(4 * CUT.interval)  # longer than the flag would last
    assert pair.heartbeatd.find_event("cut-off", since=pulled) is None
    assert pair.failoverd.find_event("acquire-start", since=pulled) is None


def test_failback_when_only_the_private_cable_returns(start_pair: Callable[..., Pair]) -> None:
    """Apple's test, at the default timings: the private cable first, then the public one."""
    pair = start_pair(DEFAULTS)
    pair.failover()
    restored = pair.cables(True, Network.PRIVATE)
    bound = DEFAULTS.failback_delay + DEFAULTS.interval + LINKWATCH + SLACK
    done = pair.failoverd.wait_event("release-done", bound, since=restored, reason="peer-heard")
    assert done.t - restored < bound < 15.0
    assert not addresses(pair.lab, Node.SECONDARY) & set(SERVICE)
    pair.heartbeatd.wait_event("announce", SLACK, since=restored, reason="released")
    replugged = pair.cables(True, Network.PUBLIC)
    home = pair.client.wait_settled(PRIMARY, replugged, timeout=15.0, quiet=1.0)
    assert home is not None, "the client did not come home to the primary"
    # by the released announcement's last GARPs or the client's next ARP query: no cache expiry
    assert home.sent - replugged < LINKWATCH + 2 * SLACK
    pair.failoverd.wait_event(
        "peer-verified", LINKWATCH + DEFAULTS.interval + SLACK, since=replugged, network="pub0"
    )
    assert pair.failoverd.find_event("acquire-start", since=done.t) is None


# --- 4. graceful stops -------------------------------------------------------------------------


def test_sigterm_to_heartbeatd_means_takeover_at_once(start_pair: Callable[..., Pair]) -> None:
    timing = Timing(interval=0.2, deadtime=2.0, failback_delay=1.0)
    pair = start_pair(timing)
    stopped = time.monotonic()
    pair.heartbeatd.send_signal(signal.SIGTERM)
    pair.heartbeatd.wait_event("leaving", SLACK, since=stopped)
    acquired = pair.failoverd.wait_event(
        "acquire-start", timing.deadtime / 2, since=stopped, reason="peer-leaving"
    )
    assert acquired.t - stopped < timing.deadtime / 4
    probe = pair.client.wait_first(SECONDARY, stopped, timing.deadtime)
    assert probe is not None and probe.sent - stopped < timing.deadtime / 2
    assert pair.heartbeatd.wait(5.0) == 0
    assert set(SERVICE) <= addresses(pair.lab, Node.SECONDARY)


def test_sigterm_to_failoverd_releases_what_it_holds(start_pair: Callable[..., Pair]) -> None:
    pair = start_pair(FAST)
    pair.failover()
    assert set(SERVICE) <= addresses(pair.lab, Node.SECONDARY)
    stopped = time.monotonic()
    pair.failoverd.send_signal(signal.SIGTERM)
    pair.failoverd.wait_event("release-start", SLACK, since=stopped, reason="shutdown")
    pair.failoverd.wait_event("release-done", SLACK, since=stopped, reason="shutdown")
    assert pair.failoverd.wait(5.0) == 0
    assert not addresses(pair.lab, Node.SECONDARY) & set(SERVICE)


# --- 5. peering --------------------------------------------------------------------------------


def peering_config(lab: Lab, node: Node) -> Path:
    """One hostconfig with both roles' variables: each node backs up the other's public address.

    S keeps the lab's pairs (P's addresses); P backs up S's own public address.
    """
    both_roles: dict[str, Any] = {**FAST.overrides(), "FAILOVER_BCAST_IPS": " ".join(BROADCASTS)}
    if node is Node.PRIMARY:
        both_roles.update(
            FAILOVER_PEER_IP=S_OWN_V4,
            FAILOVER_PEER_IP_PAIRS=f"pub0:{S_OWN_V4}",
            FAILOVER_NETWORKS="pub0 priv0",
        )
    return lab.node_config(node, filename="peering.conf", **both_roles)


def own_drops(failoverd: LabProcess, node: Node) -> list[str]:
    """Drops of datagrams a node sent itself: its own heartbeats must be ignored, not dropped."""
    own = tuple(ADDRESSES[net, node][0].split("/")[0] + ":" for net in BOTH)
    return [ln.text for ln in failoverd.events("dropped") if ln.fields["source"].startswith(own)]


def test_peering_each_node_backs_up_the_other(lab: Lab, start_client: StartClient) -> None:
    """P and S both run both daemons from one hostconfig with both roles' variables."""
    daemons = {
        (node, name): lab.start_daemon(node, name, peering_config(lab, node))
        for node in (Node.PRIMARY, Node.SECONDARY)
        for name in ("heartbeatd", "failoverd")
    }
    began = time.monotonic()
    to_p, to_s = start_client(SERVICE_V4), start_client(S_OWN_V4, log_name="client-s")
    wait_verified(daemons[Node.PRIMARY, "failoverd"], SECONDARY)
    wait_verified(daemons[Node.SECONDARY, "failoverd"], PRIMARY)
    assert to_p.wait_first(PRIMARY, began, SETUP_TIMEOUT) is not None
    s_first = to_s.wait_first(SECONDARY, began, SETUP_TIMEOUT)
    assert s_first is not None

    # Both up: each failoverd hears its own node's broadcasts too and must ignore them.
    calm = time.monotonic()
    held = watch_addresses(lab, [Node.PRIMARY, Node.SECONDARY], 3 * FAST.deadtime)
    assert not any(S_OWN_V4 in s[Node.PRIMARY] or s[Node.SECONDARY] & set(SERVICE) for s in held)
    for (node, name), proc in daemons.items():
        assert proc.find_event("acquire-start") is None, f"{node.name} {name} took over"
        assert proc.find_event("dropped", since=calm) is None, proc.tail()
    assert set(answers(to_p, calm)) == {PRIMARY}

    pulled = time.monotonic()
    lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
    lab.cable(Node.PRIMARY, Network.PRIVATE, up=False)
    bound = FAST.deadtime + SLACK
    daemons[Node.SECONDARY, "failoverd"].wait_event("acquire-done", bound, since=pulled)
    assert to_p.wait_first(SECONDARY, pulled, bound) is not None
    assert set(SERVICE) | {S_OWN_V4} <= addresses(lab, Node.SECONDARY)
    # P's failoverd works too: cut off, it hears S nowhere and takes S's address, on a dead
    # cable where it disturbs no one
    daemons[Node.PRIMARY, "failoverd"].wait_event("acquire-done", bound, since=pulled)
    # S's own address was never disturbed: its client was answered by S throughout
    seen = answers(to_s, s_first.sent)
    assert set(seen) == {SECONDARY}, seen
    for node in (Node.PRIMARY, Node.SECONDARY):
        assert own_drops(daemons[node, "failoverd"], node) == []


def test_peering_node_alone_ignores_its_own_heartbeats(lab: Lab, start_client: StartClient) -> None:
    """S starts both daemons while P is down: its own heartbeats loop back to its failoverd.

    They must not pass for the primary's (which would keep S from ever taking over), so S takes
    P's address one dead time after failoverd starts, as any failoverd started alone does.
    """
    lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
    lab.cable(Node.PRIMARY, Network.PRIVATE, up=False)
    config = peering_config(lab, Node.SECONDARY)
    heartbeatd = lab.start_daemon(Node.SECONDARY, "heartbeatd", config)
    failoverd = lab.start_daemon(Node.SECONDARY, "failoverd", config)
    heartbeatd.wait_event("start", SETUP_TIMEOUT)
    started = failoverd.wait_event("start", SETUP_TIMEOUT).t
    acquired = failoverd.wait_event(
        "acquire-start", FAST.deadtime + SLACK, since=started, reason="peer-silent"
    )
    assert acquired.t - started >= FAST.deadtime - 0.05
    failoverd.wait_event("acquire-done", SLACK, since=started)
    assert set(SERVICE) | {S_OWN_V4} <= addresses(lab, Node.SECONDARY)
    client = start_client(SERVICE_V4)
    assert client.wait_first(SECONDARY, acquired.t, SETUP_TIMEOUT) is not None
    assert heartbeatd.poll() is None  # it was broadcasting all along
    assert own_drops(failoverd, Node.SECONDARY) == []


def test_unicast_targets_for_networks_without_broadcast(
    lab: Lab, start_daemon: StartDaemon, start_client: StartClient
) -> None:
    """FAILOVER_BCAST_IPS may name the secondary's own addresses (Apple allowed unicast): the
    whole cycle works the same, takeover and the handshake back included."""
    unicast = {"FAILOVER_BCAST_IPS": "203.0.113.20 198.51.100.20"}
    heartbeatd = start_daemon(Node.PRIMARY, "heartbeatd", **FAST.overrides(), **unicast)
    failoverd = start_daemon(Node.SECONDARY, "failoverd", **FAST.overrides())
    client = start_client(SERVICE_V4)
    wait_verified(failoverd, PRIMARY)
    pair = Pair(lab, FAST, heartbeatd, failoverd, client)
    pulled = pair.failover()
    failoverd.wait_event("acquire-done", SLACK, since=pulled)
    back = pair.cables(True, *BOTH)
    pair.failback(back, FAST.failback_delay + FAST.deadtime + LINKWATCH + SLACK)


# --- 6. a wrong key and a replayed capture -----------------------------------------------------


def test_wrong_key_sender_is_dropped_and_does_not_prevent_takeover(
    start_pair: Callable[..., Pair], lab: Lab
) -> None:
    pair = start_pair(FAST)
    other_key = write_key(lab.tmpdir / "intruder.key")
    config = lab.node_config(
        Node.CLIENT,
        filename="intruder.conf",
        **FAST.overrides(),
        FAILOVER_KEY_FILE=other_key,
        FAILOVER_NODE_NAME=PRIMARY,  # claims to be the primary, from the public network
        FAILOVER_BCAST_IPS=BROADCASTS[0],
    )
    intruder = lab.start_daemon(Node.CLIENT, "heartbeatd", config, log_name="intruder")
    first = pair.failoverd.wait_event("dropped", SETUP_TIMEOUT, reason="bad-auth", network="pub0")
    assert first.fields["source"].startswith(f"{CLIENT_V4}:")
    time.sleep(10 * FAST.interval)  # ten more forgeries arrive; the log is rate-limited
    logged = [ln for ln in pair.failoverd.events("dropped") if ln.fields["reason"] == "bad-auth"]
    assert 1 <= len(logged) <= 5

    pulled = pair.failover()  # the forger keeps sending all along
    assert intruder.poll() is None
    acquired = pair.failoverd.wait_event("acquire-start", SLACK, since=pulled, reason="peer-silent")
    assert acquired.t - pulled <= FAST.deadtime + SLACK
    assert set(SERVICE) <= addresses(lab, Node.SECONDARY)


def netns_socket(lab: Lab, node: Node) -> socket.socket:
    """A UDP socket in a node's namespace.

    A helper thread joins the namespace with setns(2), which changes only the calling thread, and
    makes the socket; a socket stays in the namespace it was made in, whoever uses it later.
    """
    made: list[socket.socket | OSError] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{lab.ns(node)}", "rb") as ns:
            if libc.setns(ns.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                made.append(OSError(ctypes.get_errno(), "setns"))
                return
        made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    helper = threading.Thread(target=make)
    helper.start()
    helper.join(5.0)
    assert made, "the setns helper thread did not finish"
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


def capture_heartbeats(lab: Lab, seconds: float) -> list[bytes]:
    """Record the datagrams that reach UDP port 1694 on the client (the public broadcasts)."""
    captured: list[bytes] = []
    with netns_socket(lab, Node.CLIENT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", HEARTBEAT_PORT))
        sock.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                captured.append(sock.recv(wire.MAX_SIZE + 1))
            except TimeoutError:
                continue
    return captured


class Replayer:
    """Sends a capture to the public broadcast address from the client, over and over.

    Runs in a thread while the ``with`` block lasts (at most ``limit`` seconds), one datagram
    every ``gap`` seconds.  The source is the client's, not the primary's: replays are judged by
    their content.
    """

    def __init__(self, lab: Lab, capture: Sequence[bytes], gap: float, limit: float) -> None:
        self.sock = netns_socket(lab, Node.CLIENT)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.capture = list(capture)
        self.gap = gap
        self.limit = limit
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.sock.sendto(
                self.capture[self.sent % len(self.capture)], (BROADCASTS[0], HEARTBEAT_PORT)
            )
            self.sent += 1
            self._stop.wait(self.gap)

    def __enter__(self) -> Replayer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sock.close()


@pytest.mark.parametrize("restart", [False, True], ids=["same-failoverd", "restarted-failoverd"])
def test_replayed_capture_does_not_delay_takeover(
    start_pair: Callable[..., Pair], start_daemon: StartDaemon, lab: Lab, restart: bool
) -> None:
    pair = start_pair(FAST)
    capture = capture_heartbeats(lab, 8 * FAST.interval)
    key = auth.parse_key_text(lab.key_path.read_text())
    beats = [wire.decode(data, key) for data in capture]
    assert len(beats) >= 4
    assert all(b.type is wire.MsgType.HEARTBEAT and b.sender == PRIMARY and b.echoes for b in beats)

    with Replayer(lab, capture, gap=0.02, limit=30.0) as replayer:
        killed = time.monotonic()
        pair.heartbeatd.kill()  # SIGKILL: no LEAVING, the primary just dies
        watcher, since = pair.failoverd, killed
        if restart:
            # A new failoverd has never verified the primary, so it takes nothing while the
            # primary's address answers (docs/safety.md): the whole host dies this time.
            pair.cables(False, *BOTH)
            pair.failoverd.send_signal(signal.SIGTERM)
            assert pair.failoverd.wait(5.0) == 0
            watcher = start_daemon(
                Node.SECONDARY, "failoverd", log_name="failoverd-2", **FAST.overrides()
            )
            since = watcher.wait_event("start", SETUP_TIMEOUT).t
        bound = FAST.deadtime + FAST.interval + SLACK
        acquired = watcher.wait_event("acquire-start", bound, since=since, reason="peer-silent")
        assert acquired.t - since <= bound
        assert pair.client.wait_first(SECONDARY, killed, bound + SLACK) is not None
        assert replayer.sent > len(capture)  # the capture went round more than once

    from_client = [
        ln for ln in watcher.events("dropped") if ln.fields["source"].startswith(f"{CLIENT_V4}:")
    ]
    reasons = {ln.fields["reason"] for ln in from_client}
    # the same process has seen every one of those sequence numbers; a new one has issued none
    # of the echoed nonces (stale), then sees the capture come round again (replay)
    assert reasons == ({"stale", "replay"} if restart else {"replay"})


# --- 7. IPv6 ---------------------------------------------------------------------------------


def test_ipv6_failover_with_unsolicited_neighbour_advertisements(
    start_pair: Callable[..., Pair],
) -> None:
    pair = start_pair(FAST, target=SERVICE_V6)
    lab = pair.lab
    assert neighbour_mac(lab, Node.CLIENT, SERVICE_V6) == link_mac(lab, Node.PRIMARY)
    pulled = pair.failover()  # bounded by the dead time plus slack: no wait for NUD to fail
    probe = pair.client.first(SECONDARY, pulled)
    assert probe is not None and probe.sent - pulled <= FAST.deadtime + SLACK
    assert SERVICE_V6 in addresses(lab, Node.SECONDARY)
    # the client's warm neighbour entry was overridden by S's advertisement
    assert neighbour_mac(lab, Node.CLIENT, SERVICE_V6) == link_mac(lab, Node.SECONDARY)


# --- 8. failoverd restarted while holding ----------------------------------------------------


def test_failoverd_restart_while_holding_adopts_without_a_blip(
    start_pair: Callable[..., Pair], start_daemon: StartDaemon
) -> None:
    pair = start_pair(FAST)
    lab = pair.lab
    pair.failover()
    monitor = AddressMonitor(lab, Node.SECONDARY)
    killed = time.monotonic()
    pair.failoverd.kill()
    assert pair.failoverd.wait(5.0) == -signal.SIGKILL
    restarted = start_daemon(
        Node.SECONDARY, "failoverd", log_name="failoverd-2", **FAST.overrides()
    )
    adopt = restarted.wait_event("adopt", SETUP_TIMEOUT, since=killed)
    assert set(adopt.fields["addresses"].split()) == {
        "pub0:203.0.113.10/24",
        "pub0:[2001:db8:1::10]/64",
    }
    restarted.wait_event("start", SLACK, since=killed, state="active")
    time.sleep(3 * FAST.deadtime)  # the primary is still silent: nothing to do but hold
    window = answers(pair.client, killed - 0.1)
    assert window[None] == 0 and window[SECONDARY] >= 100, window
    assert monitor.lines(SERVICE_V4) == [] and monitor.lines(SERVICE_V6) == []
    for event in ("acquire-start", "release-start"):
        assert restarted.find_event(event) is None
    assert set(SERVICE) <= addresses(lab, Node.SECONDARY)

    pair.failoverd = restarted
    restored = pair.cables(True, *BOTH)
    pair.failback(restored, LINKWATCH + FAST.interval + FAST.failback_delay + SLACK)
