"""The control socket and `ipfailover status`, against a real Unix socket in a temp dir."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from ipfailover import cli
from ipfailover.shell import control

NOW = time.time()

FAILOVERD: dict[str, Any] = {
    "schema": 1,
    "role": "failoverd",
    "node": "secondary",
    "pid": 4242,
    "version": "0.1.0",
    "config": "/etc/hostconfig",
    "state": "active",
    "since": NOW - 12.0,
    "holding": True,
    "peer": {"name": "primary", "ip": "203.0.113.10", "interval": 1.0},
    "deadtime": 3.0,
    "failback_delay": 3.0,
    "holddown_until": None,
    "networks": [
        {
            "name": "pub0",
            "alive": False,
            "anomaly": False,
            "last_heard": NOW - 15.0,
            "heartbeats": 120,
            "loss_1m": 0.25,
        },
        {
            "name": "priv0",
            "alive": False,
            "anomaly": False,
            "last_heard": None,
            "heartbeats": 0,
            "loss_1m": None,
        },
    ],
    "addresses": [{"address": "pub0:203.0.113.10/24", "held": True}],
    "transitions": [
        {
            "action": "acquire",
            "reason": "peer-silent",
            "started": NOW - 12.0,
            "duration": 0.004,
            "ok": True,
            "vetoed": False,
            "steps": [{"step": "add-addresses", "duration": 0.002}],
        },
    ],
    "mail": {"pending": 2},
    "rejected": {
        "bad-auth": 1,
        "malformed": 0,
        "replay": 0,
        "stale": 2,
        "unknown-peer": 0,
        "unexpected": 0,
    },
    "counts": {"transitions": {}, "script_runs": 0, "script_failures": 0},
}


def serve_and_run(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    async def main() -> int:
        server = control.ControlServer(str(tmp_path), "failoverd", lambda: FAILOVERD)
        await server.start()
        mode = stat.S_IMODE(os.stat(server.path).st_mode)
        assert mode == 0o600 and stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
        try:
            return await asyncio.to_thread(cli.main, [*argv, "--run-dir", str(tmp_path)])
        finally:
            await server.close()

    code = asyncio.run(main())
    return code, capsys.readouterr().out


def test_status_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = serve_and_run(tmp_path, ["status"], capsys)
    assert code == 0
    assert "failoverd on secondary (pid 4242): ACTIVE since" in out
    assert "pub0:203.0.113.10/24" in out and "25.0%" in out
    assert "mail pending: 2" in out and "bad-auth=1" in out
    assert "acquire" in out and "peer-silent" in out


def test_status_json_is_the_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = serve_and_run(tmp_path, ["status", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == {"schema": 1, "daemons": [FAILOVERD]}


def test_no_daemon_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--run-dir", str(tmp_path)]) == 3
    assert "no ipfailover daemon is running" in capsys.readouterr().out


def test_status_table_says_why_nothing_is_taken_over_and_names_conflicts() -> None:
    """docs/safety.md: a blocked takeover and a conflict while holding are shown with the MAC."""
    from ipfailover.tools import status

    answering = [{"address": "203.0.113.10", "macs": ["02:00:00:00:00:10"]}]
    why = "its address answers, but no heartbeat was ever verified: check the firewall, key, ..."
    blocked = {
        **FAILOVERD,
        "state": "blocked",
        "holding": False,
        "transitions": [],
        "blocked": {"why": why, "answering": answering},
        "probe": {"result": "answered", "at": NOW, "answering": answering},
        "conflicts": [],
    }
    text = status.render(blocked)
    assert "BLOCKED" in text and f"NOT TAKING OVER: {why}" in text
    assert "203.0.113.10 answers from 02:00:00:00:00:10" in text
    conflict = {
        "address": "203.0.113.10",
        "macs": ["02:00:00:00:00:99"],
        "since": NOW - 5,
        "last_seen": NOW - 1,
        "frames": 3,
        "defences": 1,
    }
    holding = {**FAILOVERD, "blocked": None, "conflicts": [conflict]}
    text = status.render(holding)
    assert "ADDRESS CONFLICT: 203.0.113.10 also claimed by 02:00:00:00:00:99" in text
    assert "defended 1 times" in text
    assert "NOT TAKING OVER" not in status.render(FAILOVERD)  # an older daemon's snapshot
