"""Mail: message content, the spool, SMTP and program delivery, backoff, restarts.

A real SMTP server (aiosmtpd) on 127.0.0.1 with an ephemeral port receives the messages; the
tests check envelope recipients and content, not what the client believes it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import errno
import io
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from ipfailover import cli, mail
from ipfailover.core import config
from ipfailover.failover import executor as transition
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell.scripts import Phase, ScriptResult, Status

FAST = mail.Backoff(0.05, 0.2)
NODE = "secondary"


class Sink:
    """aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self, delay: float = 0.0) -> None:
        self.envelopes: list[Envelope] = []
        self.delay = delay

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[email.message.EmailMessage]:
        texts = [(e.original_content or b"").decode().replace("\r\n", "\n") for e in self.envelopes]
        return [
            email.message_from_string(text, policy=email.policy.default)  # type: ignore[misc]
            for text in texts
        ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def smtp_server(
    port: int = 0, sink: Sink | None = None, **options: Any
) -> AsyncIterator[tuple[Sink, int]]:
    """A real SMTP server in this event loop on 127.0.0.1 (ephemeral port unless given)."""
    sink = sink or Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTPServer(sink, **options), "127.0.0.1", port, reuse_address=True
    )
    try:
        yield sink, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def tarpit() -> Any:
    """A TCP port that accepts connections (kernel backlog) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def settings(tmp_path: Path, port: int, **changes: Any) -> mail.MailSettings:
    base = mail.MailSettings(
        recipients=("root@example.org", "oncall@example.org"),
        smtp_host="127.0.0.1",
        smtp_port=port,
        starttls=False,
        credentials_file=None,
        notify_program=None,
        spool_dir=tmp_path / "spool",
        sender="root@secondary.example",
    )
    return mail.MailSettings(**{**base.__dict__, **changes})


class Events(daemon.EventLog):
    """An EventLog that also keeps (event, fields) for assertions."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("test.mail"))
        self.seen: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, level: int = logging.INFO, **fields: object) -> None:
        self.seen.append((event, fields))
        super().__call__(event, level, **fields)

    def named(self, event: str) -> list[dict[str, object]]:
        return [f for e, f in self.seen if e == event]


def outbox(s: mail.MailSettings, events: Events | None = None, **kw: Any) -> mail.Outbox:
    delivery = kw.pop("delivery", None) or mail.delivery_for(s)
    return mail.Outbox(s, delivery, events or Events(), node=NODE, backoff=FAST, **kw)


NOTICE = mail.Notice(
    "takeover",
    "down",
    ("203.0.113.10", "2001:db8:1::10"),
    "[ipfailover] secondary took over 203.0.113.10 2001:db8:1::10 from primary (peer-silent)",
    "body text\n",
)


async def until(check: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def spooled(s: mail.MailSettings) -> list[dict[str, Any]]:
    spool = mail.Spool(s.spool_dir)
    return [json.loads((s.spool_dir / name).read_text()) for name in spool.ids()]


# --- content --------------------------------------------------------------------------------------


def record_with_scripts() -> transition.TransitionRecord:
    rec = transition.TransitionRecord(
        transition.Action.ACQUIRE,
        "peer-silent",
        ("pub0:203.0.113.10/24", "pub0:2001:db8:1::10/64"),
        started=100.0,
        started_wall=1_700_000_000.0,
    )
    rec.steps += [
        transition.Step("Test", 0.0, 0.004, "exit 0: go ahead"),
        transition.Step("PreAcq", 0.004, 0.010, "1 script(s), 1 not ok"),
        transition.Step("add-addresses", 0.014, 0.002, "2/2 added"),
        transition.Step("announce", 0.016, 0.001, "first of 5 sent for 2/2"),
        transition.Step("PostAcq", 0.017, 0.020, "1 script(s)"),
    ]
    rec.scripts += [
        ScriptResult("Test", Phase.TEST, Status.OK, 100.0, 0.004, 0, "", "exit 0"),
        ScriptResult(
            "PreAcq10.StopDIP", Phase.PRE_ACQ, Status.FAILED, 100.004, 0.01, 2, "no dip\n", "exit 2"
        ),
        ScriptResult(
            "PostAcq20.StartApache", Phase.POST_ACQ, Status.OK, 100.017, 0.02, 0, "ok\n", "exit 0"
        ),
    ]
    rec.outcome, rec.changed_at, rec.duration = transition.Outcome.DONE, 0.016, 0.037
    return rec


def test_transition_mail_says_host_peer_addresses_last_heard_timeline_and_scripts() -> None:
    now = 1_700_000_010.0
    situation = mail.Situation(
        node=NODE,
        host="s.example",
        peer="primary",
        addresses=("pub0:203.0.113.10/24", "pub0:2001:db8:1::10/64"),
        heard=(("priv0", now - 4.25), ("pub0", None)),
    )
    notice = transition.transition_notice(record_with_scripts(), situation, now)
    assert notice.subject == (
        "[ipfailover] secondary took over 203.0.113.10 2001:db8:1::10 from primary "
        "(peer-silent) -- 1 script(s) failed or refused"
    )
    assert (notice.event, notice.direction) == ("takeover", "down")
    body = notice.body
    for text in [
        "Host:      s.example (node secondary)",
        "Peer:      primary",
        "Addresses: pub0:203.0.113.10/24 pub0:2001:db8:1::10/64",
        "  priv0        2023-11-14 22:13:25.750Z (4.2 s ago)",
        "  pub0         never",
        "Outcome:   done in 0.037 s; addresses changed at +0.016 s",
        "    +0.014    0.002 s  add-addresses: 2/2 added",
        "    +0.004    0.010 s    PreAcq10.StopDIP: exit 2",
        "  PreAcq10.StopDIP       FAILED     0.010 s  exit 2",
        "      | no dip",
    ]:
        assert text in body, text
    # the timeline is in time order, each script under its step
    timeline = body.split("Timeline")[1].split("Scripts:")[0]
    order = ["Test: exit 0: go", "Test: exit 0", "PreAcq: 1", "PreAcq10", "add-addresses",
             "announce", "PostAcq: 1", "PostAcq20"]  # fmt: skip
    positions = [timeline.index(o) for o in order]
    assert positions == sorted(positions)


def test_message_headers_and_apple_arguments() -> None:
    s = mail.MailSettings(
        ("a@example.org", "b@example.org"), "localhost", 25, False, None, None, Path("/x"),
        "root@s.example",
    )  # fmt: skip
    msg = mail.build_message(NOTICE, s, NODE, 1_700_000_000.0)
    assert msg["To"] == "a@example.org, b@example.org"
    assert msg["From"] == "ipfailover on secondary <root@s.example>"
    assert msg["X-IPFailover-Notify"] == "down 203.0.113.10 2001:db8:1::10"
    assert msg["X-IPFailover-Event"] == "takeover"
    assert msg.as_string().count("\r\n") > 5  # SMTP line endings


def test_settings_come_from_the_config() -> None:
    cfg = config.parse_config(
        'FAILOVER_EMAIL_RECIPIENT="ops@example.org, root@example.org"\n'
        'FAILOVER_SMTP_SERVER="[2001:db8::25]:587"\nFAILOVER_SMTP_STARTTLS=yes\n'
        "FAILOVER_SPOOL_DIR=/var/tmp/spool\n"
    )
    s = mail.MailSettings.from_config(cfg)
    assert (s.recipients, s.smtp_host, s.smtp_port, s.starttls) == (
        ("ops@example.org", "root@example.org"), "2001:db8::25", 587, True,
    )  # fmt: skip
    assert s.spool_dir == Path("/var/tmp/spool") and s.notify_program is None


# --- SMTP -----------------------------------------------------------------------------------------


def test_smtp_delivers_to_every_recipient(tmp_path: Path) -> None:
    async def go() -> Sink:
        async with smtp_server() as (sink, port):
            s = settings(tmp_path, port)
            box = outbox(s)
            await box.submit(NOTICE)
            assert box.pending() == 1
            assert await box.deliver_due() is None
            assert box.pending() == 0
            return sink

    sink = asyncio.run(go())
    (envelope,) = sink.envelopes
    assert envelope.rcpt_tos == ["root@example.org", "oncall@example.org"]
    assert envelope.mail_from == "root@secondary.example"
    (msg,) = sink.messages()
    assert msg["Subject"] == NOTICE.subject and msg.get_content() == "body text\n"


def test_starttls_required_but_not_offered_sends_nothing(tmp_path: Path) -> None:
    async def go() -> tuple[Sink, str]:
        async with smtp_server() as (sink, port):
            delivery = mail.SmtpDelivery("127.0.0.1", port, starttls=True)
            item = mail.make_item(NOTICE, settings(tmp_path, port), NODE, "x", time.time())
            with pytest.raises(mail.DeliveryError) as err:
                await delivery.deliver(item)
            return sink, str(err.value)

    sink, error = asyncio.run(go())
    assert "does not offer STARTTLS" in error and sink.envelopes == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_with_a_root_only_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "smtp-credentials"
    creds.write_text("# the relay's account\nuser=failover\npassword=s3cret=x\n")
    creds.chmod(0o644)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mech: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret=x")

    async def go() -> Sink:
        options = {"authenticator": authenticator, "auth_require_tls": False, "auth_required": True}
        async with smtp_server(**options) as (sink, port):
            delivery = mail.SmtpDelivery("127.0.0.1", port, credentials_file=str(creds))
            item = mail.make_item(NOTICE, settings(tmp_path, port), NODE, "x", time.time())
            with pytest.raises(mail.DeliveryError, match="chmod 600"):
                await delivery.deliver(item)  # readable by others: refused before connecting
            assert logins == []
            creds.chmod(0o600)
            await delivery.deliver(item)
            return sink

    sink = asyncio.run(go())
    assert logins == [(b"failover", b"s3cret=x")] and len(sink.envelopes) == 1


# --- the outbox -----------------------------------------------------------------------------------


class FakeClock:
    """The outbox's clock, moved by the test (trio's MockClock without autojump): wall time is
    ``now``, and a ``sleep`` returns only once ``advance`` has moved ``now`` past its end."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, float, asyncio.Event]] = []  # (asked, end, wake it)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        sleeper = (seconds, self.now + seconds, asyncio.Event())
        self._sleepers.append(sleeper)
        try:
            while self.now < sleeper[1]:
                await sleeper[2].wait()
                sleeper[2].clear()
        finally:
            self._sleepers.remove(sleeper)

    def sleeping(self) -> list[float]:
        """How long each sleep under way asked for."""
        return [asked for asked, _, _ in self._sleepers]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for _, _, wake in self._sleepers:
            wake.set()


async def steps(check: Callable[[], object], most: int = 1000) -> None:
    """Let the loop run until check() holds: at most ``most`` turns, and no clock at all."""
    for _ in range(most):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not so after {most} turns of the loop")


HANG = 10.0  # seconds after which a test gives up waiting for something that hangs


def smtp_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "ipfailover-smtp" and t.is_alive()}


def test_submit_never_waits_for_a_hung_server_and_stop_does_not_wait_for_it(
    tmp_path: Path,
) -> None:
    """A server that never answers: submit still returns (nothing delivered, nothing deferred
    meanwhile), and stop grants the pass under way its grace on the outbox's clock, then
    returns with the SMTP thread still hung. Asserts no elapsed time: the clock is a fake."""
    clock = FakeClock()
    with tarpit() as port:
        s = settings(tmp_path, port)
        events = Events()
        before = smtp_threads()

        async def go() -> bool:
            hung = mail.SmtpDelivery("127.0.0.1", port, timeout=3600.0)  # outlives the test
            box = outbox(s, events, delivery=hung, clock=clock)
            box.start()
            # wait_for: only a guard that turns a hang into a failure, not a measurement
            await asyncio.wait_for(box.submit(NOTICE), HANG)
            await until(lambda: smtp_threads() - before, HANG)  # the delivery hangs on the server
            await asyncio.wait_for(box.submit(mail.Notice("release", "up", (), "2nd", "x\n")), HANG)
            assert not events.named("mail-sent") and not events.named("mail-deferred")
            assert len(spooled(s)) == 2
            stopping = asyncio.create_task(box.stop(0.2))
            await steps(lambda: clock.sleeping() == [0.2])
            assert not stopping.done()  # the pass under way gets its grace...
            clock.advance(0.2)
            await steps(stopping.done)  # ...and not a moment more
            stopping.result()
            return bool(smtp_threads() - before)

        still_hung = asyncio.run(go())
    assert still_hung  # stop did not wait for the server
    assert [item["attempts"] for item in spooled(s)] == [0, 0]


def test_a_delivery_the_server_leaves_hanging_is_deferred_with_the_timeout(
    tmp_path: Path,
) -> None:
    with tarpit() as port:
        s = settings(tmp_path, port)
        events = Events()

        async def go() -> None:
            box = outbox(s, events, delivery=mail.SmtpDelivery("127.0.0.1", port, timeout=0.4))
            box.start()
            await box.submit(NOTICE)
            await until(lambda: events.named("mail-deferred"), 5)
            await box.stop(0.2)

        asyncio.run(go())
    (item,) = spooled(s)
    assert item["attempts"] >= 1 and "timed out" in item["last_error"]


def test_undelivered_mail_is_retried_with_backoff_and_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    s = settings(tmp_path, port)
    events = Events()

    async def server_down() -> None:
        box = outbox(s, events)
        box.start()
        await box.submit(NOTICE)
        await until(lambda: len(events.named("mail-deferred")) >= 3, 5)
        await box.stop(1.0)

    asyncio.run(server_down())
    deferred = events.named("mail-deferred")
    assert [d["attempt"] for d in deferred[:3]] == [1, 2, 3]
    assert [d["retry_in"] for d in deferred[:3]] == [0.05, 0.1, 0.2]
    (item,) = spooled(s)
    assert item["attempts"] >= 3 and "Connection refused" in item["last_error"]
    assert item["next_attempt"] > item["created"]
    assert events.named("mail-pending")[-1]["count"] == 1

    async def restarted() -> Sink:
        async with smtp_server(port) as (sink, _):
            box = outbox(s, Events())
            assert box.pending() == 1
            box.start()
            await until(lambda: sink.envelopes, 5)
            await box.stop(1.0)
            assert box.pending() == 0
            return sink

    sink = asyncio.run(restarted())
    (msg,) = sink.messages()
    assert msg["Subject"] == NOTICE.subject
    assert sink.envelopes[0].rcpt_tos == list(s.recipients)


def test_two_processes_delivering_one_spool_send_each_message_once(tmp_path: Path) -> None:
    async def go() -> Sink:
        async with smtp_server(sink=Sink(delay=0.05)) as (sink, port):
            s = settings(tmp_path, port)
            first, second = outbox(s), outbox(s)
            for i in range(4):
                await first.submit(mail.Notice("takeover", "down", (), f"mail {i}", "x\n"))
            await asyncio.gather(first.deliver_due(), second.deliver_due())
            await asyncio.gather(first.deliver_due(), second.deliver_due())
            assert first.pending() == 0
            return sink

    sink = asyncio.run(go())
    assert sorted(m["Subject"] for m in sink.messages()) == [f"mail {i}" for i in range(4)]


def test_an_unreadable_spool_file_is_set_aside(tmp_path: Path) -> None:
    s = settings(tmp_path, 1)
    spool = mail.Spool(s.spool_dir)
    spool.ensure()
    (s.spool_dir / "00000000000000000001-aaaa.json").write_text("{not json")
    assert spool.read("00000000000000000001-aaaa.json") is None
    assert (s.spool_dir / "00000000000000000001-aaaa.json.bad").exists()
    assert spool.ids() == []


class Switch:
    """A delivery that fails while ``up`` is False, and otherwise records what it sent."""

    via = "test"

    def __init__(self) -> None:
        self.up = False
        self.sent: list[str] = []

    async def deliver(self, item: mail.SpoolItem) -> None:
        if not self.up:
            raise mail.DeliveryError("server down")
        self.sent.append(item.subject)


class FaultySpool(mail.Spool):
    """A spool whose next ``full`` writes fail with ENOSPC, and whose ``locked`` items cannot
    be opened (EACCES); it notes the threads its file operations ran in."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.full = 0
        self.locked: set[str] = set()
        self.threads: set[str] = set()

    def write(self, item: mail.SpoolItem) -> None:
        self.threads.add(threading.current_thread().name)
        if self.full:
            self.full -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write(item)

    def ids(self) -> list[str]:
        self.threads.add(threading.current_thread().name)
        return super().ids()

    def claim(self, name: str) -> tuple[int, mail.SpoolItem] | None:
        self.threads.add(threading.current_thread().name)
        if name in self.locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return super().claim(name)


def notice(subject: str) -> mail.Notice:
    return mail.Notice("takeover", "down", ("203.0.113.10",), subject, "x\n")


def test_a_full_disk_while_deferring_does_not_stop_delivery(tmp_path: Path) -> None:
    s = settings(tmp_path, 1)
    events = Events()
    delivery = Switch()

    async def go() -> FaultySpool:
        box = outbox(s, events, delivery=delivery)
        box.spool = spool = FaultySpool(s.spool_dir)
        box.start()
        await box.submit(notice("first"))
        spool.full = 2  # the next two deferrals cannot be written
        await until(lambda: len(events.named("mail-deferred")) >= 3, 5)
        # "mail-deferred" is logged before the spool write it announces: wait for the write
        await until(lambda: [i["attempts"] for i in spooled(s)] == [1], 5)
        assert spool.full == 0
        delivery.up = True
        await box.submit(notice("second"))
        await until(lambda: len(delivery.sent) == 2, 5)
        await box.stop(1.0)  # returns normally: nothing killed the task
        assert box.pending() == 0
        return spool

    spool = asyncio.run(go())
    errors = events.named("mail-spool-error")
    assert [e["retry_in"] for e in errors] == [0.05, 0.1]  # the backoff, kept in memory
    assert all("No space left on device" in str(e["error"]) for e in errors)
    assert sorted(delivery.sent) == ["first", "second"] and spooled(s) == []
    assert events.named("mail-pending")[-1]["count"] == 0
    assert spool.threads == {"ipfailover-spool"}  # never on the event loop's thread


def test_an_item_the_spool_cannot_open_is_held_back_and_the_rest_go_out(tmp_path: Path) -> None:
    s = settings(tmp_path, 1)
    events = Events()
    delivery = Switch()
    delivery.up = True

    async def go() -> None:
        box = outbox(s, events, delivery=delivery)
        box.spool = spool = FaultySpool(s.spool_dir)
        stuck = await box.submit(notice("stuck"))
        spool.locked.add(stuck.id)
        await box.submit(notice("fine"))
        box.start()
        await until(lambda: delivery.sent == ["fine"], 5)
        await until(lambda: len(events.named("mail-spool-error")) >= 2, 5)
        assert box.pending() == 1
        spool.locked.clear()
        await until(lambda: delivery.sent == ["fine", "stuck"], 5)
        await box.stop(1.0)
        assert box.pending() == 0

    asyncio.run(go())
    first, second = events.named("mail-spool-error")[:2]
    assert first["retry_in"] == 0.05 and second["retry_in"] == 0.1
    assert "Permission denied" in str(first["error"]) and spooled(s) == []


# --- FAILOVER_NOTIFY_PROGRAM ----------------------------------------------------------------------


def test_notify_program_gets_apples_arguments_and_the_message(tmp_path: Path) -> None:
    out = tmp_path / "out"
    program = tmp_path / "page-oncall"
    program.write_text(
        f'#!/bin/sh\necho "$@" > {out}.args\ncat > {out}.stdin\n'
        f'echo "$IPFAILOVER_EVENT|$IPFAILOVER_SUBJECT|$PATH" > {out}.env\n'
        f"[ -e {tmp_path}/fail ] && {{ echo pager down; exit 4; }}\nexit 0\n"
    )
    program.chmod(0o755)
    (tmp_path / "fail").touch()
    s = settings(tmp_path, 1, notify_program=str(program))
    events = Events()

    async def go() -> None:
        box = outbox(s, events)
        assert isinstance(box.delivery, mail.ProgramDelivery)
        await box.submit(NOTICE)
        await box.deliver_due()
        assert box.pending() == 1
        (tmp_path / "fail").unlink()
        await asyncio.sleep(0.06)
        await box.deliver_due()
        assert box.pending() == 0

    asyncio.run(go())
    assert events.named("mail-deferred")[0]["error"] == f"{program}: exit 4: pager down"
    assert Path(f"{out}.args").read_text() == "down 203.0.113.10 2001:db8:1::10\n"
    # the clean PATH the transition scripts get too, not the daemon's
    assert Path(f"{out}.env").read_text() == f"takeover|{NOTICE.subject}|{hooks.SCRIPT_PATH}\n"
    msg = email.message_from_string(Path(f"{out}.stdin").read_text(), policy=email.policy.default)
    assert msg["Subject"] == NOTICE.subject and "\r" not in Path(f"{out}.stdin").read_text()
    assert events.named("mail-sent")[0]["via"] == "program"


# --- ipfailover notify ----------------------------------------------------------------------------


class ThreadSink:
    """aiosmtpd in a thread (for commands that run their own event loop)."""

    def __init__(self) -> None:
        self.sink = Sink()
        self.port = free_port()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> ThreadSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def notify_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "hostconfig"
    path.write_text(
        f'FAILOVER_EMAIL_RECIPIENT="root@example.org"\nFAILOVER_SMTP_SERVER="127.0.0.1:{port}"\n'
        f"FAILOVER_NODE_NAME=secondary\n"
    )
    return path


def test_ipfailover_notify_sends_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadSink() as server:
        cfg = notify_config(tmp_path, server.port)
        assert cli.main(["notify", "--config", str(cfg), "down", "203.0.113.10"]) == 0
    (msg,) = server.sink.messages()
    assert server.sink.envelopes[0].rcpt_tos == ["root@example.org"]
    assert msg["Subject"].endswith("failover down 203.0.113.10")
    assert msg["X-IPFailover-Notify"] == "down 203.0.113.10"
    assert "are down" in msg.get_content()
    assert "sent to root@example.org" in capsys.readouterr().out


def test_ipfailover_notify_exits_1_when_the_server_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = notify_config(tmp_path, free_port())
    assert cli.main(["notify", "--config", str(cfg), "up", "203.0.113.10"]) == 1
    assert "not sent" in capsys.readouterr().err
    assert not (tmp_path / "spool").exists()  # the caller retries, not the command


def test_ipfailover_notify_stdin_passes_failoverds_message_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings(tmp_path, 1)
    original = mail.build_message(NOTICE, s, NODE, time.time()).as_string().replace("\r\n", "\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(original))
    with ThreadSink() as server:
        cfg = notify_config(tmp_path, server.port)
        argv = ["notify", "--config", str(cfg), "--stdin", "down", "203.0.113.10"]
        assert cli.main(argv) == 0
    (msg,) = server.sink.messages()
    assert msg["Subject"] == NOTICE.subject and msg["X-IPFailover-Event"] == "takeover"
    assert msg.get_content() == "body text\n"


def test_daemon_thread_result_and_errors_reach_the_caller() -> None:
    async def go() -> None:
        assert await mail.in_daemon_thread(lambda: threading.current_thread().daemon) is True
        with pytest.raises(ZeroDivisionError):
            await mail.in_daemon_thread(lambda: 1 / 0)

    asyncio.run(go())
