"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipfailover.shell import sdnotify

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class FakeSystemd:
    """A bound notification socket that reads what a daemon sent, with the kernel's credentials."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def receive(self) -> tuple[dict[str, str], int]:
        """The fields of the next datagram, and the sender's pid as the kernel reports it."""
        data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pid = next(
            _UCRED.unpack(payload[: _UCRED.size])[0]
            for level, kind, payload in anc
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        text = data.decode()
        assert text.endswith("\n")
        return dict(line.split("=", 1) for line in text.splitlines()), pid

    def pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(2.0)
        return True


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    """A socket at a filesystem path (short: sun_path holds 108 bytes), as NOTIFY_SOCKET."""
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        fake = FakeSystemd(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield fake
        fake.sock.close()


def test_ready_with_status_reaches_the_socket_from_this_process(systemd: FakeSystemd) -> None:
    assert sdnotify.notify(READY=1, STATUS="holding 192.0.2.10") is True
    fields, pid = systemd.receive()
    assert fields == {"READY": "1", "STATUS": "holding 192.0.2.10"}
    assert pid == os.getpid()  # what NotifyAccess=main checks


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ipfailover-test-{secrets.token_hex(8)}"
    fake = FakeSystemd("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify(STOPPING=1) is True
        assert fake.receive()[0] == {"STOPPING": "1"}
    finally:
        fake.sock.close()


def test_reloading_carries_the_monotonic_clock_in_microseconds(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.notify(RELOADING=1) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields, _ = systemd.receive()
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_explicit_monotonic_usec_is_kept(systemd: FakeSystemd) -> None:
    assert sdnotify.notify(RELOADING=True, MONOTONIC_USEC=42) is True
    assert systemd.receive()[0] == {"RELOADING": "1", "MONOTONIC_USEC": "42"}


def test_watchdog_and_booleans(systemd: FakeSystemd) -> None:
    assert sdnotify.notify(WATCHDOG=True) is True
    assert systemd.receive()[0] == {"WATCHDOG": "1"}


def test_not_under_systemd_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, systemd: FakeSystemd
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify(READY=1) is False
    assert not systemd.pending()


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_unusable_socket_addresses_are_a_no_op(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify(READY=1) is False


def test_a_vanished_socket_returns_false_without_raising(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.notify(READY=1) is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"STATUS": "two\nlines"}, "one line"), ({"ready": 1}, "upper case")],
)
def test_fields_that_would_corrupt_the_message_are_refused(
    systemd: FakeSystemd, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sdnotify.notify(**fields)
    assert not systemd.pending()


def test_watchdog_interval_from_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 10.0


def test_watchdog_meant_for_another_process_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize("usec", [None, "", "0", "-5", "1e6", "²"])
def test_watchdog_off_or_garbled(monkeypatch: pytest.MonkeyPatch, usec: str | None) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert sdnotify.watchdog_interval() is None
