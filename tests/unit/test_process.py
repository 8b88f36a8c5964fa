"""``ipfailover process`` and failoverd keep off each other's addresses (through the lock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scriptkit import V4, V6

from ipfailover.failover import executor as transition
from ipfailover.tools import process


def test_a_process_run_keeps_failoverd_from_starting_and_leaves_no_pid_behind(
    tmp_path: Path,
) -> None:
    run_dir = str(tmp_path / "run")
    with process.failoverd_kept_out(run_dir, [V4]) as why:
        assert why is None
        with pytest.raises(transition.LockHeld) as held:
            transition.ManagerLock.take(run_dir, [V4])  # what failoverd's start-up does
        assert held.value.pid == os.getpid() and held.value.addresses == []
        lock_file = tmp_path / "run" / transition.LOCK_NAME
        assert "held-by ipfailover process" in lock_file.read_text()
        assert transition.manager(run_dir) is None  # a second process run is not refused
    assert lock_file.read_text() == ""
    transition.ManagerLock.take(run_dir, [V4]).close()  # failoverd starts once the run is over


def test_a_process_run_is_refused_only_for_a_running_failoverds_addresses(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    lock = transition.ManagerLock.take(run_dir, [V6])
    try:
        with process.failoverd_kept_out(run_dir, [V4, V6]) as why:
            assert why is not None and why.startswith(
                f"refused: failoverd (pid {os.getpid()}) manages 2001:db8:1::10 "
            )
        with process.failoverd_kept_out(run_dir, [V4]) as why:
            assert why is None
    finally:
        lock.close()
