"""Cloned host names (issue 7 section 1): primary and secondary share one host name and set no
FAILOVER_NODE_NAME. The pair must still work -- no takeover of the live primary, a takeover when
it dies -- and the collision must be loud: logged, in ``status`` and reported by ``check``.

Each daemon runs in its own UTS namespace (``unshare --uts``) inside its node's network
namespace, with the host name set to ``CLONE`` there, as on two cloned VMs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from test_failover import BOTH, FAST, SERVICE, SETUP_TIMEOUT, SLACK, addresses

from ipfailover.core import config
from ipfailover.lab.processes import LabProcess, daemon_command
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Node
from ipfailover.tools import check, status

CLONE = "web-clone"


def start_cloned(lab: Lab, node: Node, daemon: str) -> tuple[LabProcess, Path]:
    """Start a daemon whose host name is CLONE and whose config leaves FAILOVER_NODE_NAME unset."""
    path = lab.node_config(
        node, filename=f"{daemon}.conf", FAILOVER_NODE_NAME=None, **FAST.overrides()
    )
    set_name = f'echo {CLONE} > /proc/sys/kernel/hostname && exec "$@"'
    argv = ["unshare", "--uts", "sh", "-c", set_name, "sh"]
    argv += [*daemon_command(daemon), "--config", str(path)]
    proc = lab.spawn(node, argv, daemon)
    lab.mark(f"start {node.name.lower()}/{daemon} as {CLONE}")
    return proc, path


def test_cloned_host_names_still_make_a_working_and_loud_pair(lab: Lab) -> None:
    heartbeatd, _ = start_cloned(lab, Node.PRIMARY, "heartbeatd")
    failoverd, s_config = start_cloned(lab, Node.SECONDARY, "failoverd")
    started = failoverd.wait_event("start", SETUP_TIMEOUT, node=CLONE)
    heartbeatd.wait_event("start", SETUP_TIMEOUT, node=CLONE)

    # The primary lives: no takeover, for three dead times past the start-up grace.
    time.sleep(max(0.0, started.t + 4 * FAST.deadtime - time.monotonic()))
    taken = failoverd.find_event("acquire-start")
    assert taken is None, f"took the live primary's addresses over\n{failoverd.tail()}"
    assert not addresses(lab, Node.SECONDARY) & set(SERVICE)

    # ... because the clone's heartbeats were verified as the primary's, loudly.
    for network in BOTH:
        failoverd.wait_event("peer-verified", SLACK, network=network.value, peer=CLONE)
    seen = failoverd.wait_event("node-name-collision", SLACK, name=CLONE)
    assert " ERROR " in seen.text
    assert len(failoverd.events("node-name-collision")) == 1  # once per episode
    heartbeatd.wait_event("node-name-collision", SLACK, name=CLONE)
    s_cfg = config.load_config(str(s_config))
    (snapshot,) = [d for d in status.collect(s_cfg.run_dir) if d["role"] == "failoverd"]
    collision = snapshot["name_collision"]
    assert collision["active"] and collision["name"] == CLONE and collision["datagrams"] > 5
    assert "NODE NAME COLLISION" in status.render(snapshot)
    (problem,) = check.identity_problems(s_cfg)
    assert f"another machine use its node name {CLONE!r}" in problem.text

    # The primary dies (no LEAVING): the secondary takes over after the dead time.
    died = time.monotonic()
    assert heartbeatd.pid is not None
    os.kill(heartbeatd.pid, signal.SIGKILL)
    failoverd.wait_event("acquire-done", FAST.deadtime + FAST.interval + SLACK, since=died)
    assert set(SERVICE) <= addresses(lab, Node.SECONDARY)
