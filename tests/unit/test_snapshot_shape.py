"""The status snapshot's declared shape (shell/snapshot.py) is what the daemons really send, and
the daemons read the core's time through the clock they are handed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ipfailover import failoverd, heartbeatd
from ipfailover.core import config
from ipfailover.shell import snapshot as shape


class FrozenClock:
    """Wall time 1000 s, monotonic (the cores' time) 50 s, until a test moves it."""

    def __init__(self) -> None:
        self.wall, self.mono = 1000.0, 50.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _config(tmp_path: Path) -> config.Config:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return config.parse_config(
        f"FAILOVER_PEER_IP=203.0.113.10\nFAILOVER_PORT={port}\n"
        "FAILOVER_BCAST_IPS=203.0.113.255\nFAILOVER_NODE_NAME=secondary\n"
        f"FAILOVER_SCRIPT_DIR={tmp_path}/scripts\nFAILOVER_SPOOL_DIR={tmp_path}/spool\n"
        f"FAILOVER_RUN_DIR={tmp_path}/run\n"
    )


def test_failoverd_snapshot_has_the_declared_keys_and_the_injected_clock(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    clock = FrozenClock()

    async def go() -> shape.FailoverdSnapshot:
        loop = asyncio.get_running_loop()
        fd = failoverd.Failoverd.create(
            cfg, bytes(32), loop, [], ("pub0",), holding=False, clock=clock
        )
        try:
            return fd.snapshot()
        finally:
            fd.udp.close()

    d = asyncio.run(go())
    assert set(d) == set(shape.FailoverdSnapshot.__annotations__)
    assert set(d["peer"]) == set(shape.Peer.__annotations__)
    assert set(d["probe"]) == set(shape.Probe.__annotations__)
    assert set(d["mail"]) == set(shape.Mail.__annotations__)
    assert set(d["counts"]) == set(shape.Counts.__annotations__)
    (network,) = d["networks"]
    assert set(network) == set(shape.Network.__annotations__)
    # the core started at the clock's monotonic 50 s, which is its wall time 1000 s
    assert d["since"] == 1000.0


def test_heartbeatd_snapshot_has_the_declared_keys(tmp_path: Path) -> None:
    cfg = _config(tmp_path)

    async def go() -> shape.HeartbeatdSnapshot:
        hb = heartbeatd.Heartbeatd(cfg, bytes(32), asyncio.get_running_loop(), clock=FrozenClock())
        try:
            return hb.snapshot()
        finally:
            hb.udp.close()

    d = asyncio.run(go())
    assert set(d) == set(shape.HeartbeatdSnapshot.__annotations__)
