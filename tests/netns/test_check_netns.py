"""`ipfailover check` sees what bites (issue 11): targets that never leave the host or have no
route, a FAILOVER_PEER_IP or pair address that is this host's own, and one watched network.

Each test runs `check` in a fresh anonymous network namespace (`unshare --net`) with dummy
interfaces on documentation addresses, so the host's own routes play no part.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ipfailover import cli

SETUP = (
    "set -e; ip link set lo up; "
    "ip link add d0 type veth peer name d0p; ip link set d0p up; ip link set d0 up; "
    "ip addr add 198.51.100.2/24 dev d0; "
    "ip link add d1 type veth peer name d1p; ip link set d1p up; ip link set d1 up; "
    "ip addr add 192.0.2.2/24 dev d1; "
)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    assert cli.main(["keygen", str(path)]) == 0
    return path


def check_in_netns(tmp_path: Path, text: str) -> tuple[int, dict[str, Any]]:
    cfg = tmp_path / "hostconfig"
    cfg.write_text(text + f'FAILOVER_RUN_DIR="{tmp_path}/run"\n')
    command = f"{SETUP} exec {sys.executable} -m ipfailover.cli check --json --config {cfg}"
    res = subprocess.run(
        ["unshare", "--net", "sh", "-c", command], capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def texts(report: dict[str, Any]) -> list[str]:
    return [f"{p['severity']}: {p['text']}" for p in report["problems"]]


def test_heartbeat_targets_that_cannot_reach_a_peer(tmp_path: Path, key: Path) -> None:
    code, report = check_in_netns(
        tmp_path,
        'FAILOVER_BCAST_IPS="127.0.0.1 224.0.0.5 198.51.100.2 203.0.113.255 198.51.100.255"\n'
        f'FAILOVER_KEY_FILE="{key}"\n',
    )
    out = texts(report)
    assert code == 1 and report["roles"] == ["heartbeatd"], out
    assert len(out) == 4, out
    assert "127.0.0.1 is a loopback address" in out[0]
    assert "224.0.0.5 is a multicast group" in out[1]
    assert "198.51.100.2 is this host's own address" in out[2]
    assert "203.0.113.255 cannot be reached from this host" in out[3]
    assert all(x.startswith(f"warning: {tmp_path}/hostconfig:1: FAILOVER_BCAST_IPS: ") for x in out)


def test_own_peer_ip_own_pair_and_one_network(tmp_path: Path, key: Path) -> None:
    code, report = check_in_netns(
        tmp_path,
        'FAILOVER_PEER_IP="198.51.100.2"\nFAILOVER_PEER_IP_PAIRS="d0:198.51.100.2"\n'
        f'FAILOVER_KEY_FILE="{key}"\n',
    )
    out = texts(report)
    assert code == 1, out
    assert len(out) == 3, out
    assert "d0:198.51.100.2: 198.51.100.2 is on d0 now" in out[0]
    assert "/32" not in out[0]  # the old, wrong warning: "no address of d0 is on a subnet"
    assert "FAILOVER_PEER_IP: 198.51.100.2 is this host's own address" in out[1]
    assert "failoverd watches one network only (d0)" in out[2] and "split brain" in out[2]


def test_peering_with_the_peers_public_address_as_target(tmp_path: Path, key: Path) -> None:
    code, report = check_in_netns(
        tmp_path,
        'FAILOVER_PEER_IP="192.0.2.1"\nFAILOVER_PEER_IP_PAIRS="d0:198.51.100.10/32"\n'
        f'FAILOVER_NETWORKS="d0 d1"\nFAILOVER_BCAST_IPS="198.51.100.10 192.0.2.255"\n'
        f'FAILOVER_KEY_FILE="{key}"\n',
    )
    out = texts(report)
    held = [x for x in out if "is also in FAILOVER_PEER_IP_PAIRS as a host address" in x]
    assert code == 1 and len(held) == 1 and "198.51.100.10" in held[0], out
    # on the subnet, heartbeatd sends to its broadcast while it holds the address: no warning
    code, report = check_in_netns(
        tmp_path,
        'FAILOVER_PEER_IP="192.0.2.1"\nFAILOVER_PEER_IP_PAIRS="d0:198.51.100.10"\n'
        f'FAILOVER_NETWORKS="d0 d1"\nFAILOVER_BCAST_IPS="198.51.100.10 192.0.2.255"\n'
        f'FAILOVER_KEY_FILE="{key}"\n',
    )
    assert (code, report["problems"]) == (0, [])


def test_two_networks_and_a_foreign_peer_are_clean(tmp_path: Path, key: Path) -> None:
    code, report = check_in_netns(
        tmp_path,
        'FAILOVER_PEER_IP="192.0.2.1"\nFAILOVER_PEER_IP_PAIRS="d0:198.51.100.10"\n'
        f'FAILOVER_NETWORKS="d0 d1"\nFAILOVER_BCAST_IPS="198.51.100.255 192.0.2.255"\n'
        f'FAILOVER_KEY_FILE="{key}"\n',
    )
    assert (code, report["problems"], report["ok"]) == (0, [], True)
    assert report["roles"] == ["heartbeatd", "failoverd"]


def test_heartbeatd_logs_send_failures_at_warning_rate_limited(tmp_path: Path, key: Path) -> None:
    """No route to the target: every send fails; the log says so once, not 20 times."""
    cfg = tmp_path / "hostconfig"
    cfg.write_text(
        'FAILOVER_BCAST_IPS="203.0.113.255"\nFAILOVER_INTERVAL=0.1\n'
        f'FAILOVER_KEY_FILE="{key}"\nFAILOVER_RUN_DIR="{tmp_path}/run"\n'
    )
    heartbeatd = Path(sys.executable).parent / "heartbeatd"
    command = f"ip link set lo up; exec timeout -s INT 2 {heartbeatd} --config {cfg}"
    res = subprocess.run(
        ["unshare", "--net", "sh", "-c", command], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 124, res.stderr  # timeout's status: it stopped heartbeatd
    failed = [x for x in res.stderr.splitlines() if "event=send-failed" in x]
    assert len(failed) == 1, res.stderr
    assert " WARNING event=send-failed to=203.0.113.255:1694 " in failed[0]
    assert 'error="Network is unreachable"' in failed[0]
