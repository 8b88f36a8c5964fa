"""failoverd's lock in FAILOVER_RUN_DIR: who holds it, for which addresses, and until when."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from scriptkit import V4, V6

from ipfailover.failover import executor as transition
from ipfailover.shell import netif


def test_manager_lock_names_the_pid_and_addresses_and_dies_with_its_holder(
    tmp_path: Path,
) -> None:
    run_dir = str(tmp_path / "run")
    assert transition.manager(run_dir) is None
    lock = transition.ManagerLock.take(run_dir, [V4, V6])
    held = transition.manager(run_dir)
    assert held is not None and held.pid == os.getpid()
    assert held.addresses == ["pub0:203.0.113.10/24", "pub0:2001:db8:1::10/64"]
    other = netif.Assignment(
        ifname="eth9", ifindex=9, address=ipaddress.ip_address("2001:db8:1::10"), prefixlen=128
    )
    assert transition.overlap(held, [other]) == ["2001:db8:1::10"]  # by address, not interface
    with pytest.raises(transition.LockHeld):
        transition.ManagerLock.take(run_dir, [V4])
    lock.close()
    assert transition.manager(run_dir) is None  # the file stays; the flock is gone
    assert stat.S_ISREG((tmp_path / "run" / transition.LOCK_NAME).stat().st_mode)
