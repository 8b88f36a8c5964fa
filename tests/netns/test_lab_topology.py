"""The lab itself: topology, fault injection, process handling and teardown.

These run no product daemons; they check that the ground the end-to-end tests
stand on is solid: the client reaches the service address, a pulled cable
really cuts traffic, partition() drops only heartbeat-port UDP, and nothing is
left behind afterwards, even when a test body raises.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ipfailover.core.config import load_config, role_problems
from ipfailover.lab.cli import configure_parser, run
from ipfailover.lab.probe import PROBE_PORT
from ipfailover.lab.processes import LabProcess, ProbeMonitor, parse_fields
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import (
    HEARTBEAT_PORT,
    SERVICE_V4,
    SERVICE_V6,
    LabError,
    LabTimeout,
    Network,
    Node,
    list_namespaces,
    sh,
)

WhoAnswers = Callable[..., Counter[str | None]]


def ip_json(lab: Lab, node: Node, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(sh(["ip", "-j", "-n", lab.ns(node), *args]))
    return result


def wait_for_line(proc: LabProcess, text: str, timeout: float = 5.0) -> None:
    """Wait (bounded) until proc has printed a line equal to text."""
    deadline = time.monotonic() + timeout
    while not any(line.text == text for line in proc.lines):
        assert time.monotonic() < deadline, f"{proc.label} never printed {text!r}"
        time.sleep(0.02)


def test_client_reaches_the_service_address_and_the_primary_answers(
    who_answers: WhoAnswers,
) -> None:
    v4 = who_answers(SERVICE_V4)
    v6 = who_answers(SERVICE_V6)
    assert set(v4) == {"primary"} and v4["primary"] >= 10
    assert set(v6) == {"primary"} and v6["primary"] >= 10
    # the secondary's own public addresses answer as the secondary
    assert set(who_answers("203.0.113.20")) == {"secondary"}
    assert set(who_answers("2001:db8:1::20")) == {"secondary"}


def test_topology_names_addresses_and_isolation(lab: Lab) -> None:
    primary_links = {link["ifname"] for link in ip_json(lab, Node.PRIMARY, "link")}
    assert primary_links == {"lo", "pub0", "priv0"}
    assert {link["ifname"] for link in ip_json(lab, Node.CLIENT, "link")} == {"lo", "pub0"}
    # no lab interface or bridge name exists in the root namespace
    root_links = {link["ifname"] for link in json.loads(sh(["ip", "-j", "link"]))}
    lab_names = {p.sw_name for p in lab.ports} | set(lab.bridges.values())
    assert not root_links & lab_names
    assert all(len(name) <= 15 for name in lab_names)
    # addresses are the documented ones and IPv6 is usable at once (no DAD)
    addrs = ip_json(lab, Node.SECONDARY, "addr", "show", "dev", "priv0")[0]["addr_info"]
    assert {(a["local"], a["prefixlen"]) for a in addrs if a["scope"] == "global"} == {
        ("198.51.100.20", 24),
        ("2001:db8:2::20", 64),
    }
    assert not any(a.get("tentative") for a in addrs)
    # the private network is not reachable from the client
    assert not any(r.get("dst") == "198.51.100.0/24" for r in ip_json(lab, Node.CLIENT, "route"))


def test_pulling_the_primarys_public_cable_makes_probes_fail(
    lab: Lab, who_answers: WhoAnswers
) -> None:
    assert set(who_answers()) == {"primary"}
    lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
    assert set(who_answers()) == {None}
    # the primary's private cable is a separate port: its private link still works
    lab.cable(Node.PRIMARY, Network.PUBLIC, up=True)
    assert set(who_answers()) == {"primary"}
    assert [text for _, text in lab.marks[-2:]] == [
        "cable primary public down",
        "cable primary public up",
    ]


def test_partition_drops_heartbeat_port_udp_but_not_probes(lab: Lab) -> None:
    lab.start_responders(ports=(PROBE_PORT, HEARTBEAT_PORT))

    def answers(port: int) -> set[str | None]:
        return set(lab.sample(SERVICE_V4, port=port))

    assert answers(HEARTBEAT_PORT) == answers(PROBE_PORT) == {"primary"}
    lab.partition(Node.PRIMARY, Network.PUBLIC, drop=True)
    assert answers(HEARTBEAT_PORT) == {None}  # dropped on the primary's way in
    assert answers(PROBE_PORT) == {"primary"}
    lab.partition(Node.PRIMARY, Network.PUBLIC, drop=False)
    assert answers(HEARTBEAT_PORT) == {"primary"}
    # the sender's side drops it too (output hook), and only on the chosen interface
    lab.partition(Node.CLIENT, Network.PUBLIC, drop=True)
    assert answers(HEARTBEAT_PORT) == {None}
    lab.partition(Node.CLIENT, Network.PUBLIC, drop=False)
    lab.partition(Node.PRIMARY, Network.PRIVATE, drop=True)
    assert answers(HEARTBEAT_PORT) == {"primary"}
    ruleset = sh(["ip", "netns", "exec", lab.ns(Node.PRIMARY), "nft", "list", "ruleset"])
    assert lab.nft_table in ruleset and '"priv0"' in ruleset and '"pub0"' not in ruleset


def test_probe_monitor_times_an_outage(lab: Lab, start_client: Callable[..., ProbeMonitor]) -> None:
    client = start_client(reply_timeout=0.2)
    start = time.monotonic()
    assert client.wait_first("primary", start, timeout=5.0) is not None
    pulled = lab.cable(Node.PRIMARY, Network.PUBLIC, up=False)
    time.sleep(0.5)
    plugged = lab.cable(Node.PRIMARY, Network.PUBLIC, up=True)
    back = client.wait_settled("primary", plugged, timeout=5.0, quiet=0.3)
    assert back is not None and back.sent - plugged < 1.0
    lost = client.lost(pulled, plugged)
    assert 30 <= lost <= 60  # ~0.5 s of 10 ms probes
    assert set(client.who_answers(pulled + 0.05, plugged - 0.05)) == {None}
    assert client.bad_lines == 0


def test_wait_event_parses_key_value_lines_and_fails_fast(lab: Lab) -> None:
    script = "import sys; print('x event=start a=1'); print('event=peer-verified network=pub0')"
    proc = lab.spawn(Node.SECONDARY, [sys.executable, "-c", script], "fake")
    line = proc.wait_event("peer-verified", timeout=5.0, network="pub0")
    assert line.fields == {"event": "peer-verified", "network": "pub0"}
    assert proc.wait_event("start", timeout=1.0).fields["a"] == "1"
    started = time.monotonic()
    with pytest.raises(LabTimeout, match="exited"):
        proc.wait_event("peer-verified", timeout=10.0, network="priv0")
    assert time.monotonic() - started < 5.0
    assert (lab.tmpdir / "logs" / "secondary-fake.log").read_text().count("event=") == 2
    assert parse_fields('event=anomaly network=pub0 msg="two words" d=0.5') == {
        "event": "anomaly",
        "network": "pub0",
        "msg": "two words",
        "d": "0.5",
    }


def test_lab_configs_satisfy_the_product_parser(lab: Lab) -> None:
    primary = load_config(str(lab.node_config(Node.PRIMARY, FAILOVER_INTERVAL=0.2)))
    secondary = load_config(
        str(lab.node_config(Node.SECONDARY, FAILOVER_DEADTIME=2.5, FAILOVER_NETWORKS=None))
    )
    assert role_problems(primary, "heartbeatd") == []
    assert role_problems(secondary, "failoverd") == []
    assert primary.interval == 0.2 and secondary.deadtime == 2.5
    assert secondary.networks == ()  # None removed the variable
    key = Path(primary.key_file)
    assert key == Path(secondary.key_file) and key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text()) == 65 and int(key.read_text(), 16) >= 0


def test_teardown_leaves_nothing_behind_even_when_the_body_raises() -> None:
    lab = Lab(stop_grace=0.5)
    with pytest.raises(RuntimeError, match="test body failed"), lab:
        # a process that ignores SIGTERM must still be gone after teardown
        stubborn = lab.spawn(
            Node.PRIMARY, ["sh", "-c", "trap '' TERM; echo ready; sleep 60"], "stubborn"
        )
        wait_for_line(stubborn, "ready")
        assert set(lab.namespaces.values()) <= set(list_namespaces())
        raise RuntimeError("test body failed")
    assert stubborn.returncode is not None
    leftovers = {*lab.namespaces.values(), lab.switch_ns} & set(list_namespaces())
    assert not leftovers
    assert not lab.tmpdir.exists()
    lab.teardown()  # idempotent


def test_a_failed_build_cleans_up_what_it_created() -> None:
    lab = Lab()
    lab.ports[-1].sw_name = "x" * 16  # too long for an interface name: the build fails
    with pytest.raises(LabError, match="x" * 16):
        lab.build()
    assert not {*lab.namespaces.values(), lab.switch_ns} & set(list_namespaces())


def test_daemon_helpers_bring_the_real_daemons_to_peer_verified(
    start_daemon: Callable[..., LabProcess], who_answers: WhoAnswers
) -> None:
    heartbeatd = start_daemon(Node.PRIMARY, "heartbeatd", FAILOVER_INTERVAL=0.2)
    failoverd = start_daemon(
        Node.SECONDARY, "failoverd", FAILOVER_INTERVAL=0.2, FAILOVER_DEADTIME=0.7
    )
    heartbeatd.wait_event("start", timeout=10.0)
    for network in Network:
        failoverd.wait_event("peer-verified", timeout=10.0, network=network.value)
    assert set(who_answers()) == {"primary"}


def test_the_lab_command_measures_every_phase(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--interval=0.2", "--deadtime=0.7", "--failback-delay=0.5", "--json"])
    code = run(args)
    result = json.loads(capsys.readouterr().out)
    phases = result["runs"][0]["phases"]
    assert list(phases) == ["failover", "failback", "graceful-stop", "restart-failback"]
    assert code == 0 and result["ok"], result["runs"][0]["error"]
    # cables pulled: the secondary answers about one dead time later, not before
    assert 0.5 <= phases["failover"]["seconds"] <= 3.0
    assert phases["graceful-stop"]["seconds"] < phases["failover"]["seconds"]
    assert result["summary"]["failover"]["ok"] == 1
    events = [e["text"] for e in result["runs"][0]["timeline"]]
    assert any(text.startswith("event=acquire-done") for text in events)
