"""Running it like a service, end to end: status, check, reload without a blip, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_failover import FAST, SLACK, Pair, addresses, answers, start_pair

from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Node

__all__ = ["start_pair"]  # the fixture, imported so pytest finds it here

IPFAILOVER = str(Path(sys.executable).parent / "ipfailover")


def status(lab: Lab, node: Node, *extra: str) -> subprocess.CompletedProcess[str]:
    run_dir = lab.tmpdir / ("secondary" if node is Node.SECONDARY else "primary") / "run"
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns(node),
            IPFAILOVER,
            "status",
            "--run-dir",
            str(run_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def status_json(lab: Lab, node: Node) -> dict[str, Any]:
    res = status(lab, node, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    daemons: list[dict[str, Any]] = json.loads(res.stdout)["daemons"]
    (d,) = daemons
    return d


def test_status_before_and_after_a_takeover(start_pair: Callable[..., Pair]) -> None:
    pair = start_pair(FAST)
    lab = pair.lab
    before = status_json(lab, Node.SECONDARY)
    assert before["role"] == "failoverd" and before["state"] == "standby"
    assert before["peer"]["name"] == "primary" and not before["holding"]
    assert {n["name"]: n["alive"] for n in before["networks"]} == {"priv0": True, "pub0": True}
    assert all(n["heartbeats"] > 0 for n in before["networks"])
    primary = status_json(lab, Node.PRIMARY)
    assert primary["role"] == "heartbeatd" and primary["sent"] > 0
    assert [x["name"] for x in primary["listeners"]] == ["secondary"]

    pulled = pair.failover()
    pair.failoverd.wait_event("acquire-done", SLACK, since=pulled)
    after = status_json(lab, Node.SECONDARY)
    assert after["state"] == "active" and after["holding"]
    assert not any(n["alive"] for n in after["networks"])
    (t,) = after["transitions"]
    assert t["action"] == "acquire" and t["reason"] == "peer-silent" and t["ok"]
    assert [s["step"] for s in t["steps"]]  # a timeline with durations
    table = status(lab, Node.SECONDARY)
    assert table.returncode == 0 and "ACTIVE since" in table.stdout
    assert "pub0:203.0.113.10/24" in table.stdout


def test_status_with_no_daemon_exits_3(lab: Lab) -> None:
    res = status(lab, Node.SECONDARY)
    assert res.returncode == 3 and "no ipfailover daemon is running" in res.stdout


def test_check_passes_on_the_lab_configs(lab: Lab) -> None:
    for node in (Node.PRIMARY, Node.SECONDARY):
        cfg = lab.node_config(node)
        res = subprocess.run(
            ["ip", "netns", "exec", lab.ns(node), IPFAILOVER, "check", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 0, res.stdout
        assert res.stdout.startswith("ok: ")


def rewrite(lab: Lab, pair: Pair, **overrides: Any) -> Path:
    """Rewrite the secondary's config in place (same path: SIGHUP re-reads it)."""
    path = Path(pair.failoverd.args[-1]) if isinstance(pair.failoverd.args, list) else None
    assert path is not None and path.exists()
    new = lab.node_config(Node.SECONDARY, filename=path.name, **{**FAST.overrides(), **overrides})
    assert new == path
    return path


def test_reload_while_holding_loses_no_probe(start_pair: Callable[..., Pair]) -> None:
    pair = start_pair(FAST)
    lab, failoverd = pair.lab, pair.failoverd
    pulled = pair.failover()
    failoverd.wait_event("acquire-done", SLACK, since=pulled)
    time.sleep(0.5)
    # A new hold-down and one more address; the held ones must stay untouched.
    rewrite(
        lab,
        pair,
        FAILOVER_FAILBACK_DELAY=2.0,
        FAILOVER_PEER_IP_PAIRS="pub0:203.0.113.10 pub0:2001:db8:1::10 pub0:203.0.113.11",
    )
    hup = time.monotonic()
    os.kill(failoverd.pid, signal.SIGHUP)
    done = failoverd.wait_event("reload-done", 5.0, since=hup)
    assert "203.0.113.11" in done.fields["added"]
    time.sleep(1.0)
    window = answers(pair.client, hup - 0.5, done.t + 0.9)
    assert window[None] == 0 and set(window) == {"secondary"}, window
    assert not failoverd.find_event("release-start", since=hup)
    assert {"203.0.113.10", "203.0.113.11"} <= addresses(lab, Node.SECONDARY)
    assert status_json(lab, Node.SECONDARY)["failback_delay"] == 2.0


def test_bad_reload_keeps_the_old_config(start_pair: Callable[..., Pair]) -> None:
    pair = start_pair(FAST)
    lab, failoverd = pair.lab, pair.failoverd
    path = rewrite(lab, pair)
    path.write_text(path.read_text() + 'FAILOVER_DEADTIEM="9"\n')
    hup = time.monotonic()
    os.kill(failoverd.pid, signal.SIGHUP)
    failed = failoverd.wait_event("reload-failed", 5.0, since=hup)
    assert "FAILOVER_DEADTIEM" in failed.fields["errors"]
    assert failoverd.poll() is None
    assert status_json(lab, Node.SECONDARY)["deadtime"] == FAST.deadtime
    # and it still does its job
    pulled = pair.failover()
    failoverd.wait_event("acquire-done", SLACK, since=pulled)


def test_heartbeatd_reload_and_tickle(start_pair: Callable[..., Pair]) -> None:
    pair = start_pair(FAST)
    hb = pair.heartbeatd
    hup = time.monotonic()
    os.kill(hb.pid, signal.SIGHUP)
    hb.wait_event("reload-done", 5.0, since=hup)
    hb.wait_event("announce", 5.0, since=hup, reason="sighup")
    assert pair.failoverd.poll() is None and not pair.failoverd.find_event("acquire-start")


def test_metrics_endpoint(lab: Lab, start_daemon: Callable[..., Any]) -> None:
    start_daemon(Node.PRIMARY, "heartbeatd", **FAST.overrides())
    fd = start_daemon(
        Node.SECONDARY, "failoverd", FAILOVER_METRICS="127.0.0.1:9694", **FAST.overrides()
    )
    fd.wait_event("peer-verified", 15.0, network="pub0")
    script = (
        "import urllib.request,sys;"
        "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9694/metrics',timeout=5)"
        ".read().decode())"
    )
    text = subprocess.run(
        ["ip", "netns", "exec", lab.ns(Node.SECONDARY), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert 'ipfailover_state{state="standby"} 1.0' in text
    assert 'ipfailover_network_alive{network="pub0"} 1.0' in text
    assert "ipfailover_mail_pending" in text
