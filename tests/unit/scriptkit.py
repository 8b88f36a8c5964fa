"""What the script, executor, lock and process tests share: real scripts in a folder of their
own, and the addresses and situation of a takeover."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

from ipfailover import mail
from ipfailover.shell import netif

V4 = netif.Assignment(
    ifname="pub0", ifindex=2, address=ipaddress.ip_address("203.0.113.10"), prefixlen=24
)
V6 = netif.Assignment(
    ifname="pub0", ifindex=2, address=ipaddress.ip_address("2001:db8:1::10"), prefixlen=64
)
SITUATION = mail.Situation(
    node="secondary", host="s.example", peer="primary", addresses=("pub0:203.0.113.10/24",)
)


def make_folder(tmp_path: Path) -> Path:
    """The script folder of the tests: ``<tmp>/scripts/203.0.113.10``, mode 0755."""
    path = tmp_path / "scripts" / "203.0.113.10"
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


def write_script(folder: Path, name: str, body: str, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False
