"""Issue 8, case 8: SMTP down for the whole run, then up; a full or slow spool disk.

Real transitions (the executor, with an empty script folder and addresses kept in a set) mail
through a real outbox to a real SMTP server (aiosmtpd) that starts only later in the test.
Promised (docs/reliability.md, case 8): every transition's mail is delivered exactly once, in
the order of the transitions, and neither a full spool nor a slow one holds a transition up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_mail import Events, Sink, free_port, settings, smtp_server, until

from ipfailover import mail
from ipfailover.failover import executor as transition
from ipfailover.failover.executor import Announcing, Executor, Outcome
from ipfailover.shell import netif
from ipfailover.shell import scripts as hooks

V4 = netif.Assignment(
    ifname="pub0", ifindex=2, address=ipaddress.ip_address("203.0.113.10"), prefixlen=24
)
SITUATION = mail.Situation(
    node="secondary", host="s.example", peer="primary", addresses=("pub0:203.0.113.10/24",)
)
BACKOFF = mail.Backoff(0.05, 1.0)


class Addresses:
    """The address backend: a set, nothing on any interface."""

    def __init__(self) -> None:
        self.present: set[str] = set()

    async def add(self, a: netif.Assignment) -> bool:
        self.present.add(str(a.address))
        return True

    async def delete(self, a: netif.Assignment) -> bool:
        self.present.discard(str(a.address))
        return True

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int:
        return count


def executor(tmp_path: Path, box: mail.Outbox, events: Events, **kw: object) -> Executor:
    folder = tmp_path / "scripts"
    folder.mkdir(exist_ok=True)
    return Executor(
        node="secondary",
        addresses=[V4],
        scripts=hooks.ScriptFolder(folder, timeout=5, enforce=False),
        backend=Addresses(),
        announcing=Announcing(1, 0.05),
        notifier=box,
        events=events,
        **kw,  # type: ignore[arg-type]
    )


async def flip(ex: Executor, n: int) -> list[transition.TransitionRecord]:
    """``n`` transitions, takeover and hand-back in turn."""
    recs = []
    for i in range(n):
        if i % 2 == 0:
            recs.append(await ex.acquire("peer-silent", SITUATION))
        else:
            recs.append(await ex.release("peer-heard", SITUATION, gate=True))
    return recs


def delivered(sink: Sink) -> list[tuple[str, str]]:
    """(Message-ID, event) of each message the server accepted, in the order it accepted them."""
    return [(m["Message-ID"], m["X-IPFailover-Event"]) for m in sink.messages()]


def test_smtp_down_for_the_whole_run_then_up_every_mail_goes_once_and_in_order(
    tmp_path: Path,
) -> None:
    port = free_port()
    s = settings(tmp_path, port)
    events = Events()

    async def go() -> tuple[Sink, list[str]]:
        box = mail.Outbox(s, mail.delivery_for(s), events, node="secondary", backoff=BACKOFF)
        box.start()
        ex = executor(tmp_path, box, events)
        (first,) = await flip(ex, 1)
        # the first mail's retries back off to the limit while the server stays down...
        await until(lambda: len(events.named("mail-deferred")) >= 6, 10)
        # ...and more transitions mail meanwhile: fresh items, due at once
        recs = [first, *(await flip4(ex))]
        await ex.drain()
        queued = [e["id"] for e in events.named("mail-queued")]
        assert len(queued) == 5
        async with smtp_server(port) as (sink, _):
            await until(lambda: len(sink.envelopes) >= 5, 15)
            await asyncio.sleep(0.5)  # time enough for a duplicate to show
        await box.stop(1.0)
        assert all(r.outcome is Outcome.DONE for r in recs)
        assert box.pending() == 0 and mail.Spool(s.spool_dir).ids() == []
        return sink, [str(i) for i in queued]

    sink, queued = asyncio.run(go())
    got = delivered(sink)
    assert len({mid for mid, _ in got}) == len(got) == 5, "a mail was sent twice or not at all"
    events_in_order = ["takeover", "release", "takeover", "release", "takeover"]
    assert [event for _, event in got] == events_in_order, got
    # ids are numbered in the order of the transitions (writes may finish in any order)
    sent = [e["id"] for e in events.named("mail-sent")]
    assert sent == sorted(queued), "not delivered in the order of the transitions"


async def flip4(ex: Executor) -> list[transition.TransitionRecord]:
    recs = [await ex.release("peer-heard", SITUATION, gate=True)]
    recs.append(await ex.acquire("peer-silent", SITUATION))
    recs.append(await ex.release("peer-heard", SITUATION, gate=True))
    recs.append(await ex.acquire("peer-silent", SITUATION))
    return recs


@pytest.fixture
def full_spool(tmp_path: Path) -> Iterator[Path]:
    """A spool folder on a 64 KiB tmpfs filled to the last byte; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
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
        with pytest.raises(OSError) as full:
            (spool / "probe").write_bytes(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
        with contextlib.suppress(FileNotFoundError):
            (spool / "probe").unlink()
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_spool_disk_delays_no_transition_and_loses_no_mail(
    tmp_path: Path, full_spool: Path
) -> None:
    port = free_port()
    s = settings(tmp_path, port, spool_dir=full_spool)
    events = Events()

    async def go() -> Sink:
        box = mail.Outbox(s, mail.delivery_for(s), events, node="secondary", backoff=BACKOFF)
        box.start()
        ex = executor(tmp_path, box, events)
        recs = await flip(ex, 3)
        await ex.drain()
        assert [r.outcome for r in recs] == [Outcome.DONE] * 3
        assert box.pending() == 3  # kept in memory
        async with smtp_server(port) as (sink, _):
            await until(lambda: len(sink.envelopes) >= 3, 15)
            await asyncio.sleep(0.5)
        await box.stop(1.0)
        assert box.pending() == 0
        return sink

    sink = asyncio.run(go())
    errors = events.named("mail-spool-error")
    assert len(errors) == 3 and all("No space left" in str(e["error"]) for e in errors)
    assert all(e["kept"] == "in memory" for e in errors)
    # each transition ended before its mail found the spool full: the disk held none of them up
    order = [e for e, _ in events.seen if e in ("acquire-done", "release-done", "mail-spool-error")]
    dones = [i for i, e in enumerate(order) if e != "mail-spool-error"]
    fulls = [i for i, e in enumerate(order) if e == "mail-spool-error"]
    assert len(dones) == len(fulls) == 3 and all(d < f for d, f in zip(dones, fulls, strict=True))
    got = delivered(sink)
    assert [event for _, event in got] == ["takeover", "release", "takeover"]
    assert len({mid for mid, _ in got}) == 3
    assert sorted(os.listdir(full_spool)) == []


class SlowSpool(mail.Spool):
    """A spool whose first ``slow`` writes wait until the test lets them go (a disk that takes
    its time); the writes after them are quick."""

    def __init__(self, path: Path, slow: int) -> None:
        super().__init__(path)
        self.go = threading.Event()
        self.slow = slow
        self.lock = threading.Lock()

    def write(self, item: mail.SpoolItem) -> None:
        with self.lock:
            slow, self.slow = self.slow > 0, self.slow - 1
        if slow:
            self.go.wait(20)
        super().write(item)


def test_a_slow_spool_disk_holds_no_transition_up_and_keeps_the_order(tmp_path: Path) -> None:
    port = free_port()
    s = settings(tmp_path, port)
    events = Events()

    async def go() -> Sink:
        async with smtp_server(port) as (sink, _):
            box = mail.Outbox(s, mail.delivery_for(s), events, node="secondary", backoff=BACKOFF)
            box.spool = spool = SlowSpool(s.spool_dir, slow=1)
            box.start()
            ex = executor(tmp_path, box, events, spool_timeout=30.0)
            try:
                # the first transition ends while the disk still holds its mail, and so do
                # the next two, whose mail is written at once
                recs = await asyncio.wait_for(flip(ex, 3), 3.0)
                assert [r.outcome for r in recs] == [Outcome.DONE] * 3
                await until(lambda: len(events.named("mail-queued")) == 2, 5)
                await asyncio.sleep(0.3)  # the server is up: nothing may overtake the first
                assert sink.envelopes == []
            finally:
                spool.go.set()
            await ex.flush_mail()
            await until(lambda: len(sink.envelopes) >= 3, 15)
            await asyncio.sleep(0.3)
            await box.stop(1.0)
        return sink

    sink = asyncio.run(go())
    assert [event for _, event in delivered(sink)] == ["takeover", "release", "takeover"]


class Picky(Sink):
    """Refuses (554) any message whose subject says "poison"; takes the rest."""

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        if b"poison" in (envelope.original_content or b""):  # type: ignore[attr-defined]
            return "554 5.6.0 refused: poison"
        return await super().handle_DATA(server, session, envelope)  # type: ignore[arg-type]


def test_a_message_the_server_refuses_does_not_hold_the_later_ones_back(tmp_path: Path) -> None:
    async def go() -> tuple[Sink, mail.Outbox]:
        async with smtp_server(sink=Picky()) as (sink, port):
            s = settings(tmp_path, port)
            events = Events()
            box = mail.Outbox(s, mail.delivery_for(s), events, node="secondary", backoff=BACKOFF)
            poison = mail.Notice("takeover", "down", (), "poison", "x\n")
            await box.submit(poison)
            await box.submit(mail.Notice("release", "up", (), "fine", "x\n"))
            box.start()
            await until(lambda: len(sink.envelopes) == 1, 5)
            deferred = events.named("mail-deferred")
            assert deferred and "554" in str(deferred[0]["error"])
            await box.stop(1.0)
            return sink, box

    sink, box = asyncio.run(go())
    assert [m["Subject"] for m in sink.messages()] == ["fine"]
    assert box.pending() == 1  # the refused one waits for its retry; it is not lost
