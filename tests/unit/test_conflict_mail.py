"""A returning primary claims every address it has at once: failoverd mails one notice per
claiming MAC for the conflicts of a short while (CONFLICT_MAIL_GATHER), not one per address."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from ipfailover import failoverd
from ipfailover.core import config
from ipfailover.core.monitor import AddressConflict, State
from ipfailover.failover import notices
from ipfailover.failoverd import evidence
from ipfailover.mail.spool import Spool

MAC_P, MAC_X = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
ADDRESSES = [f"203.0.113.{n}" for n in range(10, 40)]


def _config(tmp_path: Path) -> config.Config:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return config.parse_config(
        f"FAILOVER_PEER_IP=203.0.113.10\nFAILOVER_PORT={port}\n"
        "FAILOVER_NODE_NAME=secondary\nFAILOVER_EMAIL_RECIPIENT=ops@example.org\n"
        f"FAILOVER_SCRIPT_DIR={tmp_path}/scripts\nFAILOVER_SPOOL_DIR={tmp_path}/spool\n"
        f"FAILOVER_RUN_DIR={tmp_path}/run\n"
    )


def test_the_conflicts_of_a_while_make_one_mail_per_claiming_mac(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evidence, "CONFLICT_MAIL_GATHER", 0.05)
    cfg = _config(tmp_path)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        fd = failoverd.Failoverd.create(cfg, bytes(32), loop, [], ("pub0",), holding=True)
        try:
            for address in ADDRESSES:  # the primary's claims, each address once
                fd._address_conflict(
                    AddressConflict(address=address, mac=MAC_P, state=State.ACTIVE, at=1.0)
                )
            fd._address_conflict(  # and another machine's, on one of them
                AddressConflict(address=ADDRESSES[3], mac=MAC_X, state=State.ACTIVE, at=1.0)
            )
            await asyncio.sleep(0.5)
        finally:
            fd.udp.close()

    asyncio.run(go())
    spool = Spool(tmp_path / "spool")
    items = [spool.read(name) for name in spool.ids()]
    subjects = sorted(item.subject for item in items if item is not None)
    assert subjects == [
        f"[ipfailover] secondary: address conflict on {ADDRESSES[0]} and 29 more: also at {MAC_P}",
        f"[ipfailover] secondary: address conflict on {ADDRESSES[3]}: also at {MAC_X}",
    ]


def test_a_conflict_mail_names_twenty_addresses_and_counts_the_rest() -> None:
    from ipfailover import mail

    s = mail.Situation(node="secondary", host="s.example", peer="primary", addresses=())
    notice = notices.conflict_notice(tuple(ADDRESSES), MAC_P, s, 10.0, 0.0)
    assert notice.ips == tuple(ADDRESSES)
    assert f"{', '.join(ADDRESSES[:20])} and 10 more, another machine claims them" in notice.body
