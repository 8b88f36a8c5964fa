"""Issue 8, case 8, with the real daemons: SMTP down for the whole run, then up, and the spool
on a full disk.

heartbeatd runs on the primary and failoverd on the secondary, whose spool is a 64 KiB tmpfs
filled to the last byte, and nothing listens on its SMTP port. The primary's cables are pulled
and plugged twice (two takeovers, two hand-backs: four mails). Then an SMTP server (aiosmtpd's
own command line, printing each message) starts in the secondary's namespace, and a fifth
transition makes failoverd retry at once. Promised (docs/reliability.md, case 8): every mail
arrives exactly once, in the order of the transitions, and the full disk held no transition up.

Needs root, iproute2, nftables and mount, like tests/netns.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipfailover.lab.processes import LabProcess, LogLine
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Network, Node

FAST = {"FAILOVER_INTERVAL": 0.2, "FAILOVER_DEADTIME": 0.8, "FAILOVER_FAILBACK_DELAY": 0.5}
SMTP_PORT = 2525
TIMEOUT = 15.0
BOTH = (Network.PUBLIC, Network.PRIVATE)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmpdir=tmp_path / "lab") as built:
        yield built


@pytest.fixture
def full_spool(tmp_path: Path) -> Iterator[Path]:
    """A spool folder on a 64 KiB tmpfs filled to the last byte; unmounted afterwards."""
    mount = tmp_path / "spoolfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    try:
        spool = mount / "spool"
        spool.mkdir(mode=0o700)
        with open(mount / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            for _ in range(1000):
                f.write(b"\0" * 4096)
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def cables(lab: Lab, up: bool) -> float:
    for net in BOTH:
        lab.cable(Node.PRIMARY, net, up=up)
    return time.monotonic()


def mails(smtpd: LabProcess) -> list[tuple[str, str]]:
    """(Message-ID, X-IPFailover-Event) of each message the server printed, in order."""
    out: list[tuple[str, str]] = []
    mid = ""
    for line in smtpd.lines:
        if line.text.startswith("Message-ID:"):
            mid = line.text.split(":", 1)[1].strip()
        elif line.text.startswith("X-IPFailover-Event:"):
            out.append((mid, line.text.split(":", 1)[1].strip()))
    return out


def test_smtp_down_and_a_full_spool_lose_no_mail_and_keep_its_order(
    lab: Lab, full_spool: Path
) -> None:
    lab.start_daemon(
        Node.PRIMARY,
        "heartbeatd",
        lab.node_config(Node.PRIMARY, filename="hb.conf", FAILOVER_INTERVAL=0.2),
    )
    config = lab.node_config(
        Node.SECONDARY,
        filename="fo.conf",
        **FAST,
        FAILOVER_SMTP_SERVER=f"127.0.0.1:{SMTP_PORT}",
        FAILOVER_SPOOL_DIR=str(full_spool),
    )
    fo = lab.start_daemon(Node.SECONDARY, "failoverd", config)
    for net in BOTH:
        fo.wait_event("peer-verified", TIMEOUT, network=net.value)
    expected = []
    for _ in range(2):
        since = cables(lab, up=False)
        fo.wait_event("acquire-done", TIMEOUT, since=since)
        expected.append("takeover")
        since = cables(lab, up=True)
        fo.wait_event("release-done", TIMEOUT, since=since)
        expected.append("release")
    # The transitions' mails; a returning cable may also draw a conflict mail (the primary's
    # kernel claims its IPv6 address while we hold it: docs/safety.md), which is not counted.
    def transition_mail(e: LogLine) -> bool:
        return any(
            q.fields.get("id") == e.fields.get("id")
            and q.fields.get("mail-event") in ("takeover", "release")
            for q in fo.events("mail-queued")
        )

    deadline = time.monotonic() + TIMEOUT
    while (
        len([e for e in fo.events("mail-spool-error") if transition_mail(e)]) < 4
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    kept = [e for e in fo.events("mail-spool-error") if transition_mail(e)]
    assert len(kept) == 4 and all("kept=" in e.text for e in kept), fo.tail()
    assert len(fo.events("mail-deferred")) >= 1  # SMTP was down
    # each transition ended before its mail found the spool full
    order = [
        e.fields["event"]
        for e in fo.lines
        if e.event in ("acquire-done", "release-done")
        or (e.event == "mail-spool-error" and transition_mail(e))
    ]
    done_at = [i for i, e in enumerate(order) if e != "mail-spool-error"]
    full_at = [i for i, e in enumerate(order) if e == "mail-spool-error"]
    assert all(d < f for d, f in zip(done_at, full_at, strict=True)), order

    argv = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{SMTP_PORT}"]
    smtpd = lab.spawn(Node.SECONDARY, argv, "smtpd")
    time.sleep(1.0)  # aiosmtpd says nothing when it listens
    since = cables(lab, up=False)  # a fifth transition: its mail retries the oldest at once
    fo.wait_event("acquire-done", TIMEOUT, since=since)
    expected.append("takeover")
    deadline = time.monotonic() + TIMEOUT
    def transition_mails() -> list[tuple[str, str]]:
        return [(mid, event) for mid, event in mails(smtpd) if event in ("takeover", "release")]

    while len(transition_mails()) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # time enough for a duplicate to show
    got = transition_mails()
    assert [event for _, event in got] == expected, (got, fo.tail())
    assert len({mid for mid, _ in got}) == len(got), "a mail was delivered twice"
    assert fo.poll() is None
