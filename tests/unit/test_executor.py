"""The transition executor, with real scripts (sh) and a fake address backend.

The scripts are real programs run by :mod:`ipfailover.shell.scripts`; only the netlink side is
replaced (by :class:`FakeBackend`, which writes every change to the same log the scripts write to),
so the order of scripts and address changes is observed, not assumed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scriptkit import SITUATION, V4, V6, make_folder, write_script

from ipfailover import failoverd, mail
from ipfailover.core import config
from ipfailover.failover import executor as transition
from ipfailover.failover.executor import Action, Announcing, Executor, Outcome
from ipfailover.shell import netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell.scripts import Phase, ScriptFolder, Status


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


# --- the executor ---------------------------------------------------------------------------------


class FakeBackend:
    """Address changes as lines in the shared log, and the present set in a file scripts read."""

    def __init__(self, log: Path, state: Path, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.log = log
        self.state = state
        self.fail = fail
        self.present: set[str] = set()
        self.announces: list[tuple[str, int, float]] = []
        self._write()

    def _write(self) -> None:
        self.state.write_text(" ".join(sorted(self.present)))

    def _note(self, text: str) -> None:
        with self.log.open("a") as f:
            f.write(text + "\n")

    async def add(self, a: netif.Assignment) -> bool:
        if str(a.address) in self.fail:
            raise netif.NetifError(f"cannot add {a}: test failure")
        self.present.add(str(a.address))
        self._write()
        self._note(f"add {a.address}")
        return True

    async def delete(self, a: netif.Assignment) -> bool:
        self.present.discard(str(a.address))
        self._write()
        self._note(f"delete {a.address}")
        return True

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int:
        self.announces.append((str(a.address), count, interval))
        self._note(f"announce {a.address} {count}")
        return count


class Notices:
    def __init__(self) -> None:
        self.sent: list[mail.Notice] = []

    async def submit(self, notice: mail.Notice) -> object:
        self.sent.append(notice)
        return None


class Events(daemon.EventLog):
    """An EventLog that also keeps (event, fields)."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("test.hooks"))
        self.seen: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, level: int = logging.INFO, **fields: object) -> None:
        self.seen.append((event, fields))
        super().__call__(event, level, **fields)


RECORDER = 'echo "$(basename "$0") $IPFAILOVER_ACTION present=$(cat ../state) {extra}" >> ../log'


@pytest.fixture
def bench(folder: Path) -> Iterator[tuple[Executor, FakeBackend, Notices, Path]]:
    log = folder.parent / "log"
    log.write_text("")
    backend = FakeBackend(log, folder.parent / "state")
    notices = Notices()
    executor = Executor(
        node="secondary",
        addresses=[V4, V6],
        scripts=ScriptFolder(folder, timeout=2, enforce=True),
        backend=backend,
        announcing=Announcing(3, 0.05),
        notifier=notices,
        events=daemon.EventLog(logging.getLogger("test")),
    )
    yield executor, backend, notices, log


def lines(log: Path) -> list[str]:
    return [line.rstrip() for line in log.read_text().splitlines()]


def acquire(executor: Executor, gate: bool = True) -> transition.TransitionRecord:
    async def go() -> transition.TransitionRecord:
        rec = await executor.acquire("peer-silent", SITUATION, gate=gate)
        await executor.drain()
        return rec

    return asyncio.run(go())


def test_acquire_runs_test_pre_change_announce_post_in_that_order(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, backend, notices, log = bench
    for name in ["Test", "PreAcq10.one", "PreAcq20.two", "PostAcq10.three", "PostAcq20.four"]:
        write_script(folder, name, RECORDER.format(extra=""))
    write_script(folder, "PreRel10.never", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.DONE and rec.ok
    both = "2001:db8:1::10 203.0.113.10"
    # the second announcements run in the background and may land anywhere among PostAcq's
    repeats = ("announce 203.0.113.10 2", "announce 2001:db8:1::10 2")
    assert [line for line in lines(log) if line not in repeats][:9] == [
        "Test acquire present=",
        "PreAcq10.one acquire present=",
        "PreAcq20.two acquire present=",
        "add 203.0.113.10",
        "add 2001:db8:1::10",
        "announce 203.0.113.10 1",
        "announce 2001:db8:1::10 1",
        f"PostAcq10.three acquire present={both}",
        f"PostAcq20.four acquire present={both}",
    ]
    # the rest of the announcements follow in the background, one interval after the first
    rest = [a for a in backend.announces if a[1] == 2]
    assert sorted(a[0] for a in rest) == ["2001:db8:1::10", "203.0.113.10"]
    assert all(a[2] == 0.05 for a in rest)
    assert [s.name for s in rec.steps] == [
        "Test", "PreAcq", "add-addresses", "announce", "PostAcq",
    ]  # fmt: skip
    assert rec.changed_at is not None and rec.steps[2].start <= rec.changed_at
    (notice,) = notices.sent
    assert notice.event == "takeover" and notice.direction == "down"
    assert notice.ips == ("203.0.113.10", "2001:db8:1::10")
    assert notice.subject.startswith("[ipfailover] secondary took over 203.0.113.10")


def test_test_saying_no_declines_the_takeover_and_only_mails(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, backend, notices, log = bench
    write_script(folder, "Test", RECORDER.format(extra="") + "\nexit 1")
    write_script(folder, "PreAcq10", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.DECLINED and not rec.ok
    assert rec.why == "Test said no (exit 1)"
    assert lines(log) == ["Test acquire present="]
    assert backend.present == set() and backend.announces == []
    (notice,) = notices.sent
    assert notice.event == "takeover-declined"
    assert "did NOT take over" in notice.subject and "Test said no (exit 1)" in notice.subject
    assert "script(s) failed" not in notice.subject


def test_a_test_that_times_out_declines_with_the_reason(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, _, notices, _ = bench
    write_script(folder, "Test", "sleep 30")
    rec = acquire(executor)
    assert rec.outcome is Outcome.DECLINED
    assert rec.why == "Test said no (killed after the 2 s timeout)"
    assert "killed after the 2 s timeout" in notices.sent[0].body


def test_a_failing_script_is_reported_but_does_not_stop_the_others(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, _, notices, log = bench
    write_script(folder, "PreAcq10.bad", "echo disk full >&2; exit 7")
    write_script(folder, "PreAcq20.good", RECORDER.format(extra=""))
    write_script(folder, "PostAcq10.ww", RECORDER.format(extra=""), mode=0o777)
    write_script(folder, "PostAcq20.good", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.DONE
    statuses = {r.name: r.status for r in rec.scripts}
    assert statuses == {
        "PreAcq10.bad": Status.FAILED,
        "PreAcq20.good": Status.OK,
        "PostAcq10.ww": Status.REFUSED,
        "PostAcq20.good": Status.OK,
    }
    assert "PostAcq10.ww" not in log.read_text()
    (notice,) = notices.sent
    assert notice.subject.endswith("-- 2 script(s) failed or refused")
    assert "disk full" in notice.body and "REFUSED" in notice.body
    assert "writable by group and others (mode 0777)" in notice.body


def test_release_is_gated_by_test_except_for_shutdown(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, backend, notices, log = bench
    write_script(folder, "Test", RECORDER.format(extra="") + '\n[ "$IPFAILOVER_ACTION" = acquire ]')
    write_script(folder, "PreRel10", RECORDER.format(extra=""))
    write_script(folder, "PostRel10", RECORDER.format(extra=""))

    async def go() -> tuple[transition.TransitionRecord, ...]:
        taken = await executor.acquire("peer-silent", SITUATION)
        refused = await executor.release("peer-heard", SITUATION, gate=True)
        refused_again = await executor.release("peer-heard", SITUATION, gate=True)
        stopping = await executor.release("shutdown", SITUATION, gate=False)
        return taken, refused, refused_again, stopping

    taken, refused, _, stopping = asyncio.run(go())  # type: ignore[misc]
    assert taken.ok and not refused.ok and refused.outcome is Outcome.DECLINED
    assert stopping.outcome is Outcome.DONE and backend.present == set()
    both = "2001:db8:1::10 203.0.113.10"
    assert [line for line in lines(log) if not line.startswith("announce")] == [
        "Test acquire present=",
        "add 203.0.113.10",
        "add 2001:db8:1::10",
        "Test release present=" + both,  # refused: we keep holding
        "Test release present=" + both,  # refused again after the next hold-down
        "PreRel10 release present=" + both,  # shutdown: no Test
        "delete 203.0.113.10",
        "delete 2001:db8:1::10",
        "PostRel10 release present=",
    ]
    # the same refusal again (every hold-down) is mailed once
    assert [n.event for n in notices.sent] == ["takeover", "release-declined", "release"]
    assert "retrying after the hold-down" in notices.sent[1].subject


def test_transitions_are_serialized(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, _, _, log = bench
    write_script(folder, "PostAcq10.slow", "sleep 0.3; " + RECORDER.format(extra="end"))
    write_script(folder, "PreRel10", RECORDER.format(extra="start"))

    async def go() -> None:
        first = asyncio.create_task(executor.acquire("peer-silent", SITUATION))
        await asyncio.sleep(0.05)  # the acquire is inside its PostAcq script now
        await executor.release("peer-heard", SITUATION, gate=True)
        await first

    asyncio.run(go())
    order = [line.split()[0] for line in lines(log)]
    assert order.index("PostAcq10.slow") < order.index("PreRel10")


def test_no_address_added_is_a_failure_and_post_scripts_do_not_run(
    folder: Path,
) -> None:
    log = folder.parent / "log"
    backend = FakeBackend(log, folder.parent / "state", fail={"203.0.113.10", "2001:db8:1::10"})
    notices = Notices()
    executor = Executor(
        node="secondary",
        addresses=[V4, V6],
        scripts=ScriptFolder(folder, timeout=2, enforce=True),
        backend=backend,
        announcing=Announcing(1, 0.05),
        notifier=notices,
    )
    write_script(folder, "PostAcq10", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.FAILED and not rec.ok
    assert len(rec.errors) == 2 and "test failure" in rec.errors[0]
    assert not log.exists() or "PostAcq10" not in log.read_text()
    assert "FAILED to take over" in notices.sent[0].subject
    assert notices.sent[0].event == "takeover-failed"


class HungSpool:
    async def submit(self, notice: mail.Notice) -> object:
        await asyncio.Event().wait()  # a spool on a hung file system: never done
        return None


def test_a_hung_spool_does_not_hold_the_transition_up(folder: Path) -> None:
    log = folder.parent / "log"
    events = Events()
    executor = Executor(
        node="secondary",
        addresses=[V4],
        scripts=ScriptFolder(folder, timeout=2, enforce=True),
        backend=FakeBackend(log, folder.parent / "state"),
        announcing=Announcing(1, 0.05),
        notifier=HungSpool(),
        events=events,
        spool_timeout=0.1,
    )

    async def go() -> transition.TransitionRecord:
        rec = await executor.acquire("peer-silent", SITUATION)
        await executor.drain()
        return rec

    # The spool never answers: that the takeover ends at all shows its 0.1 s timeout fired (the
    # 20 s bound only keeps a broken one from hanging the test, and asserts nothing about speed).
    rec = asyncio.run(asyncio.wait_for(go(), 20))
    assert rec.outcome is Outcome.DONE
    (error,) = [f for e, f in events.seen if e == "mail-spool-error"]
    assert error["error"] == "not written in 0.1 s"


def test_script_environment_is_documented_and_complete(folder: Path) -> None:
    env = transition.script_env(
        action=Action.RELEASE,
        reason="peer-heard",
        phase=Phase.PRE_REL,
        node="secondary",
        situation=SITUATION,
        addresses=[V4, V6],
        folder=folder,
    )
    assert env == {
        "PATH": hooks.SCRIPT_PATH,
        "IPFAILOVER_ACTION": "release",
        "IPFAILOVER_REASON": "peer-heard",
        "IPFAILOVER_PHASE": "PreRel",
        "IPFAILOVER_NODE": "secondary",
        "IPFAILOVER_PEER": "primary",
        "IPFAILOVER_ADDRESSES": "pub0:203.0.113.10/24 pub0:2001:db8:1::10/64",
        "IPFAILOVER_IPS": "203.0.113.10 2001:db8:1::10",
        "IPFAILOVER_SCRIPT_DIR": str(folder),
        "IPFAILOVER_PROBE": "",
        "IPFAILOVER_ANSWERING": "",
        "IPFAILOVER_PEER_VERIFIED": "",
    }
    docs = (Path(__file__).parents[2] / "docs" / "scripts.md").read_text()
    assert all(f"`{name}`" in docs for name in env)


def test_a_takeover_of_an_answering_address_says_so_to_the_scripts(folder: Path) -> None:
    """docs/safety.md: the probe's finding goes to Test and every script."""
    situation = dataclasses.replace(
        SITUATION,
        probe="answered",
        answering=(("203.0.113.10", ("02:00:00:00:00:10", "02:00:00:00:00:11")),),
        peer_verified=True,
    )
    env = transition.script_env(
        action=Action.ACQUIRE,
        reason="peer-silent",
        phase=Phase.TEST,
        node="secondary",
        situation=situation,
        addresses=[V4],
        folder=folder,
    )
    assert env["IPFAILOVER_PROBE"] == "answered"
    assert env["IPFAILOVER_ANSWERING"] == (
        "203.0.113.10=02:00:00:00:00:10 203.0.113.10=02:00:00:00:00:11"
    )
    assert env["IPFAILOVER_PEER_VERIFIED"] == "yes"
    text = mail.situation_text(situation, 0.0)
    assert "STILL ANSWERING" in text and "02:00:00:00:00:11" in text


# --- failoverd's use of the executor -------------------------------------------------------------


class StopDuringTakeover:
    """An executor whose takeover is interrupted by SIGTERM (failoverd's stop handler)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.daemon: Any = None

    def _record(self, action: Action, reason: str) -> transition.TransitionRecord:
        rec = transition.TransitionRecord(action, reason, (), 0.0, 0.0)
        rec.outcome = Outcome.DONE
        return rec

    async def acquire(
        self, reason: str, situation: mail.Situation, *, gate: bool = True
    ) -> transition.TransitionRecord:
        self.calls.append(("acquire", reason, gate))
        self.daemon._on_stop()  # SIGTERM arrives while the takeover is still running
        return self._record(Action.ACQUIRE, reason)

    async def release(
        self, reason: str, situation: mail.Situation, *, gate: bool
    ) -> transition.TransitionRecord:
        self.calls.append(("release", reason, gate))
        return self._record(Action.RELEASE, reason)

    async def prepare(self) -> None:
        pass

    async def flush_mail(self) -> None:
        pass

    def reconfigure(self, addresses: object, scripts: object, announcing: object) -> None:
        pass


def test_a_stop_during_a_takeover_hands_back_right_after_it(tmp_path: Path) -> None:
    """Regression: the release asked for from within acquire_done was taken for an overlap."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.parse_config(
        f"FAILOVER_PEER_IP=203.0.113.10\nFAILOVER_PORT={port}\n"
        f"FAILOVER_SCRIPT_DIR={tmp_path}/scripts\nFAILOVER_SPOOL_DIR={tmp_path}/spool\n"
    )
    fake = StopDuringTakeover()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        fd = failoverd.Failoverd.create(
            cfg, bytes(32), loop, [], ("pub0",), holding=False, executor=fake
        )
        fake.daemon = fd
        try:
            fd.core.handle_timer(loop.time() + 10)  # past the start-up grace, all silent
            fd._flush()
            await asyncio.wait_for(fd.stopped.wait(), 5)
        finally:
            fd.udp.close()

    asyncio.run(go())
    assert fake.calls == [("acquire", "peer-silent", True), ("release", "shutdown", False)]
