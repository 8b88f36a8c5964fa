"""failoverd's UDP endpoint with a receiving socket per watched interface (issue 8, case 10).

Uses the loopback interface: a datagram to a watched interface is read once, through that
interface's own socket; the port still cannot be taken by a socket without SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from ipfailover.shell import runtime as daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs root")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unicast_to_a_watched_interface_queues_on_its_own_socket_only() -> None:
    port = free_udp_port()
    udp = daemon.UdpEndpoint(port, families=(socket.AF_INET,), per_device=True)
    try:
        assert udp.bind_devices(["lo"]) == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for i in range(3):
                out.sendto(b"x%d" % i, ("127.0.0.1", port))
        own = udp.devices[(socket.AF_INET, "lo")]
        own.settimeout(1.0)
        assert [own.recv(64) for _ in range(3)] == [b"x0", b"x1", b"x2"]
        with pytest.raises(BlockingIOError):  # the shared queue got none of them
            udp.socks[socket.AF_INET].recv(64)
    finally:
        udp.close()


def test_the_wildcard_socket_is_not_woken_by_broadcast_copies_from_a_watched_interface() -> None:
    """A broadcast reaches the interface's own socket and the wildcard one; the kernel drops
    the wildcard's copy (a socket filter), so the daemon does not read it only to ignore it."""
    port = free_udp_port()
    udp = daemon.UdpEndpoint(port, broadcast=True, families=(socket.AF_INET,), per_device=True)
    try:
        assert udp.bind_devices(["lo"]) == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            out.sendto(b"b", ("127.255.255.255", port))
        own = udp.devices[(socket.AF_INET, "lo")]
        own.settimeout(1.0)
        assert own.recv(64) == b"b"
        with pytest.raises(BlockingIOError):  # no copy queued on the wildcard socket
            udp.socks[socket.AF_INET].recv(64)
        assert udp.bind_devices([]) == []  # no interface of its own: the wildcard gets all
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(b"c", ("127.0.0.1", port))
        udp.socks[socket.AF_INET].settimeout(1.0)
        assert udp.socks[socket.AF_INET].recv(64) == b"c"
    finally:
        udp.close()


def test_datagrams_on_a_watched_interface_reach_the_daemon_once() -> None:
    port = free_udp_port()

    async def go() -> list[daemon.Datagram]:
        udp = daemon.UdpEndpoint(port, families=(socket.AF_INET,), per_device=True)
        got: list[daemon.Datagram] = []
        udp.start(asyncio.get_running_loop(), got.append)
        assert udp.bind_devices(["lo"]) == []  # after start: its readers are added at once
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for i in range(3):
                out.sendto(b"x%d" % i, ("127.0.0.1", port))
        for _ in range(100):
            if len(got) >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        udp.close()
        return got

    got = asyncio.run(go())
    assert [(d.data, d.ifname) for d in got] == [(b"x0", "lo"), (b"x1", "lo"), (b"x2", "lo")]


def test_the_port_cannot_be_shared_without_so_reuseport() -> None:
    port = free_udp_port()
    udp = daemon.UdpEndpoint(port, families=(socket.AF_INET,), per_device=True)
    try:
        assert udp.bind_devices(["lo"]) == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            with pytest.raises(OSError) as refused:
                other.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE
        assert udp.bind_devices([]) == [] and not udp.devices  # dropped again
    finally:
        udp.close()
