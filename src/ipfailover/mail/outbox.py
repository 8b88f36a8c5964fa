"""Notifications: build the mail, spool it to disk, deliver it in the background with backoff.

Apple's failoverd called ``NotifyFailover {up|down} ip...``, which mailed
``FAILOVER_EMAIL_RECIPIENT``; admins could replace the program. Here:

* a :class:`Notice` (subject, body, Apple's direction and addresses) becomes an RFC 5322 message
  addressed to ``FAILOVER_EMAIL_RECIPIENT`` and is written to the spool (``FAILOVER_SPOOL_DIR``) as
  one JSON file, atomically (write, fsync, rename, fsync the folder). Nothing else happens on the
  caller's path: a takeover never waits for a mail server;
* an :class:`Outbox` task delivers what is due, oldest first, over SMTP (``FAILOVER_SMTP_*``) or
  through ``FAILOVER_NOTIFY_PROGRAM`` (called with Apple's arguments ``up|down ip...`` and the
  message on stdin; exit 0 means delivered). A failure reschedules the item with exponential
  backoff (1 s doubling to 5 min); the schedule is kept in the item's file, so it survives
  restarts. Each delivery holds an flock on the item, so two processes never send it twice.
  A spool the task cannot list, read or write (EACCES, ENOSPC, EIO) is logged and retried with
  the same backoff; the task itself never stops before the daemon does;
* mail goes out **in order**: while the server is unreachable, the oldest waiting message
  holds the others back, so when the server returns they leave oldest first. A new notice
  retries the oldest at once. Only a message the server itself refused (a 5xx answer to its
  recipients or data) stops holding the others back, and a notice whose spool write takes
  longer than WRITE_PATIENCE (a hung disk) stops holding back those after it;
* a notice the spool cannot take (a full disk, say) is **kept in memory** and delivered from
  there, in its place in the order, and written to the spool at stop if it can be by then.

SMTP runs stdlib ``smtplib`` in a daemon thread with a socket timeout, and the spool's file
operations run in daemon threads too: a hung server or disk can delay nothing but the mail, and
cannot keep the daemon from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ipfailover.core import auth, config, episodes
from ipfailover.shell import control
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks

if TYPE_CHECKING:  # smtplib, ssl and email are imported when a mail is built or sent: a
    # failoverd that never mails never loads them (start-up time, memory)
    from email.message import EmailMessage

log = logging.getLogger("ipfailover.mail")
T = TypeVar("T")

SMTP_TIMEOUT = 30.0  # seconds per SMTP socket operation
PROGRAM_TIMEOUT = 60.0  # seconds FAILOVER_NOTIFY_PROGRAM may take per message
BACKOFF_FIRST = 1.0  # seconds before the first retry
BACKOFF_MAX = 300.0  # the retry interval doubles up to this
RESCAN = 60.0  # the outbox looks at the spool at least this often (items other processes add)
SPOOL_VERSION = 1


MEMORY_MAX = 1000  # notices kept in memory while the spool cannot take them; then the oldest go
WRITE_PATIENCE = 5.0  # seconds a slow spool write of a new notice holds later ones back


class DeliveryError(Exception):
    """One delivery attempt failed; the message says why (it goes to the log and the spool).

    ``refused``: the server answered and refused this message (a 5xx to its recipients or its
    data), so the next message need not wait for it.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Notice:
    """What to tell the admin. ``direction`` and ``ips`` are Apple's NotifyFailover arguments."""

    event: str  # takeover, release, anomaly, recovered, declined, failed, manual, notify
    direction: str  # "down": the primary failed (or looks failing); "up": it is back
    ips: tuple[str, ...]
    subject: str
    body: str


@dataclass(frozen=True)
class Situation:
    """The facts every failoverd mail states: who, about whom, which addresses, last heard."""

    node: str  # this node's name (FAILOVER_NODE_NAME or the host name)
    host: str  # this machine's host name
    peer: str  # the primary's node name, or what we know of it
    addresses: tuple[str, ...]  # interface:address/prefix
    heard: tuple[tuple[str, float | None], ...] = ()  # (network, wall time last heard or None)
    watched: bool = True  # False for a transition by hand: nothing was listening
    # What the probe before a takeover found (docs/safety.md): "answered", "silent", "failed",
    # or "" (no probe: a release, a graceful handover, a transition by hand)
    probe: str = ""
    answering: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (address, MACs that answered)
    peer_verified: bool | None = None  # the primary was verified since failoverd started


def format_time(wall: float) -> str:
    """A wall-clock time as UTC with milliseconds: 2024-05-01 12:00:03.123Z."""
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall))
    return f"{whole}.{int((wall % 1) * 1000):03d}Z"


def situation_text(s: Situation, now: float) -> str:
    """The common head of every mail body (``now`` is wall-clock time)."""
    lines = [
        f"Host:      {s.host} (node {s.node})",
        f"Peer:      {s.peer}",
        f"Addresses: {' '.join(s.addresses) or '-'}",
        f"Time:      {format_time(now)}",
        "",
    ]
    if not s.watched:
        lines.append("Heartbeats: not watched (a transition by hand)")
        return "\n".join(lines)
    lines.append("Last heard the primary, per network:")
    for network, wall in s.heard:
        when = "never" if wall is None else f"{format_time(wall)} ({now - wall:.1f} s ago)"
        lines.append(f"  {network:<12} {when}")
    if s.answering:
        lines += ["", "STILL ANSWERING on the link when probed before the takeover:"]
        lines += [f"  {address:<24} from {' '.join(macs)}" for address, macs in s.answering]
    elif s.probe:
        lines += ["", f"Probe before the takeover: {s.probe} (no address answered)"]
    return "\n".join(lines)


def network_notice(
    kind: str,
    network: str,
    s: Situation,
    now: float,
    episode: episodes.Summary | None = None,
    wall: Callable[[float], float] = lambda t: t,
    settle: float = episodes.SETTLE_MIN,
) -> Notice:
    """Apple's one-network rule: heartbeats lost (``anomaly``) or back (``recovered``) on one.

    One mail per episode (:mod:`ipfailover.core.episodes`): ``episode`` is the policy's summary,
    with its times on the clock ``wall`` turns into wall-clock time; ``settle`` is how long the
    network must stay unchanged before the summary goes out.
    """
    ips = tuple(a.split(":", 1)[1].rsplit("/", 1)[0] for a in s.addresses)
    reason = episode.reason if episode is not None else "start"
    losses = episode.anomalies if episode is not None else 1
    if kind == "anomaly" and reason == "start":
        subject = (
            f"[ipfailover] {s.node}: no heartbeats from {s.peer} on {network}; nothing taken over"
        )
        intro = (
            f"Heartbeats from {s.peer} stopped on network {network} but still arrive on another.\n"
            "This is a network anomaly, not a failure of the primary: nothing was taken over.\n"
            "Check the cabling and switches of that network.\n\n"
            "If the network flaps, its changes are not mailed one by one: one mail sums them up\n"
            f"when it has not changed for {settle:g} s, and one an hour while it goes on."
        )
    elif kind == "anomaly" and reason == "settled":
        subject = (
            f"[ipfailover] {s.node}: no heartbeats from {s.peer} on {network} after {losses} "
            "losses; nothing taken over"
        )
        intro = (
            f"Network {network} flapped and has now been silent for {settle:g} s, while another\n"
            f"network still hears {s.peer}: nothing was taken over. Check its cabling and switches."
        )
    elif reason == "reminder":
        subject = (
            f"[ipfailover] {s.node}: heartbeats from {s.peer} on {network} still flapping "
            f"({losses} losses so far)"
        )
        intro = (
            f"Heartbeats from {s.peer} on network {network} keep stopping and coming back.\n"
            "Nothing was taken over. Check the cabling and switches of that network."
        )
    elif reason == "settled":
        subject = f"[ipfailover] {s.node}: heartbeats from {s.peer} on {network} again"
        if losses > 1:
            subject += f" (after {losses} losses)"
        intro = (
            f"Heartbeats from {s.peer} arrive on network {network} again, steadily for "
            f"{settle:g} s; the anomaly is over."
        )
    else:
        subject = f"[ipfailover] {s.node}: heartbeats from {s.peer} on {network} again"
        intro = f"Heartbeats from {s.peer} arrive on network {network} again; the anomaly is over."
    direction = "down" if kind == "anomaly" else "up"
    body = f"{intro}\n\n"
    if episode is not None and reason != "start":
        body += episode_text(episode, wall) + "\n"
    return Notice(kind, direction, ips, subject, f"{body}{situation_text(s, now)}\n")


def episode_text(e: episodes.Summary, wall: Callable[[float], float]) -> str:
    """What happened on the network since the episode began, for a summary mail."""
    return "\n".join(
        [
            f"Episode on {e.network}:",
            f"  started      {format_time(wall(e.started))} (first loss)",
            f"  last change  {format_time(wall(e.changed))}",
            f"  heartbeats lost {e.anomalies} time(s), back {e.recoveries} time(s)",
            f"  declared silent for {e.silent_for:.1f} s in all (from each loss to its return)",
            "",
        ]
    )


def command_notice(direction: str, ips: Sequence[str], host: str) -> Notice:
    """What ``ipfailover notify up|down ip...`` says when it gets no message on stdin."""
    listed = " ".join(ips)
    if direction == "down":
        text = f"The primary's addresses {listed} are down; {host} is taking them over."
    else:
        text = f"The primary's addresses {listed} are up again; {host} is handing them back."
    subject = f"[ipfailover] {host}: failover {direction} {listed}"
    return Notice("notify", direction, tuple(ips), subject, text + "\n")


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailSettings:
    """The FAILOVER_* variables of the notifier, parsed once."""

    recipients: tuple[str, ...]
    smtp_host: str
    smtp_port: int
    starttls: bool
    credentials_file: str | None
    notify_program: str | None
    spool_dir: Path
    sender: str  # envelope and From address: root@<host name>
    strict: bool = False  # check FAILOVER_NOTIFY_PROGRAM as a script (FAILOVER_SCRIPT_STRICT, root)

    @classmethod
    def from_config(cls, cfg: config.Config) -> MailSettings:
        host, port = config.split_host_port(cfg.smtp_server, 25)
        return cls(
            recipients=cfg.email_recipients,
            smtp_host=host,
            smtp_port=port,
            starttls=cfg.smtp_starttls,
            credentials_file=cfg.smtp_credentials_file,
            notify_program=cfg.notify_program,
            spool_dir=Path(cfg.spool_dir),
            sender=f"root@{socket.gethostname()}",
            strict=cfg.script_strict and os.geteuid() == 0,
        )


def notify_program_problem(cfg: config.Config) -> str | None:
    """Why FAILOVER_NOTIFY_PROGRAM must not run, as one line naming the file and the fix.

    The checks of a transition script (FAILOVER_SCRIPT_STRICT, as root): the program, every
    symbolic link followed to reach it and every directory above it must be owned by root (or
    the daemon's user) and not writable by group or others. It runs as root with every message.
    """
    if not cfg.notify_program or not (cfg.script_strict and os.geteuid() == 0):
        return None
    problem, st = hooks.chain_problem(cfg.notify_program, os.geteuid())
    if problem is None and st is not None and not stat.S_ISREG(st.st_mode):
        problem = f"{cfg.notify_program} is not a regular file; name the program itself"
    elif problem is None and st is not None and not st.st_mode & 0o111:
        problem = f"{cfg.notify_program} is not executable (fix: chmod 755 {cfg.notify_program})"
    if problem is None:
        return None
    where = cfg.where("FAILOVER_NOTIFY_PROGRAM")
    return f"{where}: {problem}"


def build_message(notice: Notice, settings: MailSettings, node: str, now: float) -> EmailMessage:
    """The RFC 5322 message for ``notice`` (CRLF line endings, ready for SMTP)."""
    import email.policy
    import email.utils
    from email.message import EmailMessage

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((f"ipfailover on {node}", settings.sender))
    msg["To"] = ", ".join(settings.recipients)
    msg["Subject"] = notice.subject
    msg["Date"] = email.utils.formatdate(now)
    msg["Message-ID"] = email.utils.make_msgid("ipfailover", settings.sender.split("@", 1)[1])
    msg["X-IPFailover-Event"] = notice.event
    msg["X-IPFailover-Notify"] = " ".join([notice.direction, *notice.ips])
    msg.set_content(notice.body)
    return msg


def make_item(
    notice: Notice, settings: MailSettings, node: str, item_id: str, now: float
) -> SpoolItem:
    """The message for ``notice`` with its envelope, ready to spool or to deliver at once."""
    return SpoolItem(
        id=item_id,
        created=now,
        event=notice.event,
        direction=notice.direction,
        ips=notice.ips,
        recipients=settings.recipients,
        sender=settings.sender,
        subject=notice.subject,
        message=build_message(notice, settings, node, now).as_string(),
        next_attempt=now,
    )


# --- the spool ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpoolItem:
    """One message waiting for delivery: the file's content, plus its file name as ``id``."""

    id: str
    created: float  # wall clock
    event: str
    direction: str
    ips: tuple[str, ...]
    recipients: tuple[str, ...]
    sender: str
    subject: str
    message: str  # the whole RFC 5322 message, CRLF line endings
    attempts: int = 0
    next_attempt: float = 0.0  # wall clock; persisted so a restart keeps the backoff
    last_error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"version": SPOOL_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, name: str, text: str) -> SpoolItem:
        data: dict[str, Any] = json.loads(text)
        if data.pop("version", None) != SPOOL_VERSION:
            raise ValueError("unknown spool format version")
        data["id"] = name
        for key in ("ips", "recipients"):
            data[key] = tuple(data[key])
        return cls(**data)


class Spool:
    """A folder of ``<time>-<random>.json`` files, one per undelivered message.

    Every write is atomic (a temporary file renamed into place, both fsynced), so a crash leaves
    either the old or the new content, never half a message. A file that cannot be parsed is
    renamed to ``*.bad`` (kept for the admin) and logged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        """Create the folder (0700) if need be; refuse one that is not ours alone."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = control.private_dir_problem(self.path)
        if problem is not None:
            raise control.UnsafeDirectory(f"spool {problem}")

    def new_id(self, now: float) -> str:
        return f"{int(now * 1e9):020d}-{secrets.token_hex(4)}.json"

    def write(self, item: SpoolItem) -> None:
        self.ensure()
        tmp = self.path / f".tmp-{item.id}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(item.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / item.id)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ids(self) -> list[str]:
        """The waiting items' names, oldest first."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))

    def read(self, name: str) -> SpoolItem | None:
        """The item, or None if it is gone (delivered meanwhile) or unreadable (set aside)."""
        fd = self._open(name)
        if fd is None:
            return None
        with open(fd, encoding="utf-8") as f:
            text = f.read()
        return self.parse(name, text)

    def parse(self, name: str, text: str) -> SpoolItem | None:
        """The item in ``text``; None if it cannot be parsed (the file is then set aside)."""
        try:
            return SpoolItem.from_json(name, text)
        except (ValueError, TypeError, KeyError) as e:
            with contextlib.suppress(OSError):
                os.replace(self.path / name, self.path / f"{name}.bad")
            log.error(daemon.format_event("mail-spool-bad", file=name, error=e))
            return None

    def claim(self, name: str) -> tuple[int, SpoolItem] | None:
        """Lock one item for delivery and read it: (the fd holding the flock, the item).

        None if another process holds it, or it is gone or unreadable. The caller closes the fd,
        which drops the lock. Blocking (open, flock, read): call it off the event loop.
        """
        fd = self._open(name)
        if fd is None:
            return None
        try:
            item = self._read_locked(fd, name)
        except BaseException:
            os.close(fd)
            raise
        if item is None:
            os.close(fd)
            return None
        return fd, item

    def _open(self, name: str) -> int | None:
        """Open item ``name`` for reading; None if it is gone, or is a symbolic link.

        O_NOFOLLOW: a link planted in the spool (pointing at a file of someone's choosing) is
        never followed; it is set aside as ``*.bad`` and logged, like an unreadable item.
        """
        try:
            return os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
        with contextlib.suppress(OSError):
            os.replace(self.path / name, self.path / f"{name}.bad")
        log.error(daemon.format_event("mail-spool-bad", file=name, error="a symbolic link"))
        return None

    def _read_locked(self, fd: int, name: str) -> SpoolItem | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another process is delivering it
        st = os.fstat(fd)
        if st.st_nlink == 0:
            return None  # delivered (removed) or replaced while we opened it
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"spool item {name} is not a regular file")
        with open(fd, encoding="utf-8", closefd=False) as f:
            return self.parse(name, f.read())

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / name).unlink()
        self._sync_dir()


# --- delivery ----------------------------------------------------------------------------------


class Delivery(Protocol):
    """One way to hand a spooled message on; raises DeliveryError if it did not go."""

    via: str

    async def deliver(self, item: SpoolItem) -> None: ...


def read_credentials(path: str, uid: int | None = None) -> tuple[str, str]:
    """``user=NAME`` and ``password=SECRET`` lines from a file only its owner can read.

    The file must be a regular file owned by root (or the daemon's user) with no group or other
    permissions at all (mode 0600 or 0400): it holds a password.
    """
    uid = os.geteuid() if uid is None else uid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise DeliveryError(f"credentials file {path}: {e.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, uid) or st.st_mode & 0o077:
            raise DeliveryError(
                f"credentials file {path} must be a regular file owned by root with mode 0600 "
                f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); run: "
                f"chown root {path} && chmod 600 {path}"
            )
        values: dict[str, str] = {}
        for line in f.read().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    if not values.get("user") or "password" not in values:
        raise DeliveryError(f"credentials file {path} needs a user= and a password= line")
    return values["user"], values["password"]


async def in_daemon_thread(fn: Callable[[], T], name: str = "ipfailover-smtp") -> T:
    """Run blocking ``fn`` in a daemon thread (called ``name``) and await it.

    Unlike ``asyncio.to_thread``, a hung call (a mail server, a disk) does not keep the process
    from exiting: asyncio waits for its default executor's threads at shutdown, and not for this
    one.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:  # handed to the awaiting task
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


@dataclass
class SmtpDelivery:
    """Delivery over SMTP, with optional STARTTLS (never falling back to plain text) and login."""

    host: str
    port: int
    starttls: bool = False
    credentials_file: str | None = None
    timeout: float = SMTP_TIMEOUT
    via: str = "smtp"

    async def deliver(self, item: SpoolItem) -> None:
        import smtplib
        import ssl

        credentials = read_credentials(self.credentials_file) if self.credentials_file else None
        try:
            refused = await in_daemon_thread(lambda: self._send(item, credentials))
        except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
            rejected = isinstance(e, smtplib.SMTPRecipientsRefused) or (
                isinstance(e, smtplib.SMTPDataError) and 500 <= e.smtp_code < 600
            )
            raise DeliveryError(
                f"{self.host}:{self.port}: {_smtp_error(e)}", refused=rejected
            ) from None
        if refused:
            log.warning(
                daemon.format_event(
                    "mail-recipients-refused", id=item.id, refused=" ".join(sorted(refused))
                )
            )

    def _send(self, item: SpoolItem, credentials: tuple[str, str] | None) -> dict[str, Any]:
        import smtplib
        import ssl

        with smtplib.SMTP(
            self.host, self.port, timeout=self.timeout, local_hostname=socket.gethostname()
        ) as smtp:
            smtp.ehlo()
            if self.starttls:
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if credentials is not None:
                smtp.login(*credentials)
            refused: dict[str, Any] = smtp.sendmail(
                item.sender, list(item.recipients), item.message.encode("utf-8")
            )
            return refused


def _smtp_error(e: BaseException) -> str:
    import smtplib

    if isinstance(e, smtplib.SMTPResponseException):
        text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else ""
        return f"{e.smtp_code} {text}".strip()
    return f"{type(e).__name__}: {e}"


@dataclass
class ProgramDelivery:
    """FAILOVER_NOTIFY_PROGRAM: ``program up|down ip...`` with the message on stdin; 0 = sent."""

    program: str
    timeout: float = PROGRAM_TIMEOUT
    via: str = "program"
    strict: bool = False  # the script checks (see notify_program_problem), before every run

    async def deliver(self, item: SpoolItem) -> None:
        env = {
            "PATH": hooks.SCRIPT_PATH,
            "IPFAILOVER_EVENT": item.event,
            "IPFAILOVER_SUBJECT": item.subject,
            "IPFAILOVER_RECIPIENTS": " ".join(item.recipients),
        }
        argv = [self.program, item.direction, *item.ips]
        stdin = item.message.replace("\r\n", "\n").encode("utf-8")
        try:
            fd = hooks.open_checked(self.program, uid=os.geteuid(), strict=self.strict)
        except hooks.Refused as e:
            raise DeliveryError(f"{self.program}: refused: {e}") from None
        except OSError as e:
            raise DeliveryError(f"{self.program}: cannot run: {e.strerror}") from None
        try:  # run the file just checked, whatever is renamed meanwhile (as for scripts)
            with hooks.pinned(fd, os.path.basename(self.program)) as runnable:
                res = await hooks.run_program(
                    argv,
                    env=env,
                    cwd="/",
                    timeout=self.timeout,
                    stdin=stdin,
                    executable=runnable,
                    pass_fds=(fd,),
                )
        finally:
            os.close(fd)
        if res.error is not None:
            raise DeliveryError(f"{self.program}: cannot run: {res.error}")
        if res.timed_out:
            raise DeliveryError(f"{self.program}: killed after the {self.timeout:g} s timeout")
        if res.exit_code != 0:
            output = res.output.strip()[-300:]
            raise DeliveryError(f"{self.program}: exit {res.exit_code}: {output}".rstrip(": "))


def delivery_for(settings: MailSettings) -> Delivery:
    """The admin's notify program if set (it replaces SMTP, as Apple's did), else SMTP."""
    if settings.notify_program:
        return ProgramDelivery(settings.notify_program, strict=settings.strict)
    return SmtpDelivery(
        settings.smtp_host, settings.smtp_port, settings.starttls, settings.credentials_file
    )


# --- the outbox ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Retry delays: ``first`` seconds, doubling per failed attempt, at most ``limit``."""

    first: float = BACKOFF_FIRST
    limit: float = BACKOFF_MAX

    def delay(self, attempts: int) -> float:
        return float(min(self.limit, self.first * 2 ** min(max(attempts - 1, 0), 30)))


@dataclass
class Outbox:
    """Spools notices and delivers them in the background; see the module docstring.

    ``submit`` only writes the spool file. ``start`` runs the delivery task; ``deliver_due``
    is one pass over what is due (the ``process`` command uses it once, without the task).

    The delivery task never dies of an error: a spool it cannot list, read or write (EACCES,
    ENOSPC, EIO) or anything unexpected is logged (``mail-spool-error``, ``mail-outbox-error``)
    and retried with the same backoff as a failed delivery. Every spool operation runs in a
    daemon thread, off the event loop; ``pending`` is a count kept up to date by ``submit`` and
    the delivery passes, so status snapshots read no disk.
    """

    settings: MailSettings
    delivery: Delivery
    events: daemon.EventLog
    node: str
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    spool: Spool = field(init=False)
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _stopping: bool = field(init=False, default=False)
    _count: int = field(init=False, default=0)  # messages waiting, as last counted
    _reported: int = field(init=False, default=-1)  # the count last logged as mail-pending
    _holds: dict[str, tuple[int, float]] = field(init=False, default_factory=dict)
    # ^ item id -> (spool faults in a row, clock time before which it is not tried again)
    _sent: set[str] = field(init=False, default_factory=set)  # delivered, but the file stayed
    _faults: int = field(init=False, default=0)  # passes in a row that could not list the spool
    _pass_faulted: bool = field(init=False, default=False)
    _memory: dict[str, SpoolItem] = field(init=False, default_factory=dict)
    # ^ notices the spool could not take, by id: delivered from here, in their place in the order
    _refused: set[str] = field(init=False, default_factory=set)  # the server refused them (5xx)
    _probe: bool = field(init=False, default=False)  # a new notice: retry the oldest at once
    _writing: dict[str, float] = field(init=False, default_factory=dict)
    # ^ id -> clock time its spool write began: later notices wait for it (WRITE_PATIENCE)
    _last_id: str = field(init=False, default="")  # ids grow with each notice: that is the order

    def __post_init__(self) -> None:
        self.spool = Spool(self.settings.spool_dir)
        with contextlib.suppress(OSError):  # the delivery task logs an unreadable spool
            self._count = len(self.spool.ids())  # once, at construction

    def pending(self) -> int:
        """How many messages are waiting in the spool (for logs and the status command).

        The count kept by ``submit`` and the delivery passes: no disk access, since status and
        metrics snapshots call this on the event loop.
        """
        return self._count

    async def submit(self, notice: Notice) -> SpoolItem:
        """Queue ``notice`` for delivery: an atomic spool write, then wake the delivery task.

        If the spool cannot take it (ENOSPC, EACCES, EIO) it is kept in memory and delivered
        from there (``mail-spool-error`` says so). The write goes on if the caller is cancelled
        (a transition waits a bounded time for it), and then settles in the background: the
        notice ends up on disk or in memory, never in neither, nor in both.
        """
        now = self.clock()
        item_id = self.spool.new_id(now)
        while item_id <= self._last_id:  # the clock stepped back, or two in one tick
            now = max(now, int(self._last_id[:20]) / 1e9) + 1e-6
            item_id = self.spool.new_id(now)
        self._last_id = item_id
        item = make_item(notice, self.settings, self.node, item_id, now)
        await asyncio.shield(asyncio.get_running_loop().create_task(self._queue(item)))
        return item

    async def _queue(self, item: SpoolItem) -> None:
        self._writing[item.id] = self.clock()
        try:
            await self._off_loop(lambda: self.spool.write(item))
        except OSError as e:
            self._keep(item, e)
        finally:
            self._writing.pop(item.id, None)
        self.events("mail-queued", id=item.id, mail_event=item.event, subject=item.subject)
        self._count += 1
        self._note_pending()
        self._probe = True
        self._wake.set()

    def _keep(self, item: SpoolItem, error: OSError) -> None:
        """Keep in memory an item the spool could not take (bounded: the oldest go first)."""
        self._memory[item.id] = item
        self.events(
            "mail-spool-error",
            logging.ERROR,
            id=item.id,
            subject=item.subject,
            error=_describe(error),
            kept="in memory",
        )
        while len(self._memory) > MEMORY_MAX:
            lost = self._memory.pop(min(self._memory))
            self._count = max(0, self._count - 1)
            self.events("mail-lost", logging.ERROR, id=lost.id, subject=lost.subject)

    def start(self) -> None:
        self._note_pending()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float) -> None:
        """Let a delivery pass that is under way finish (at most ``grace`` s), then stop.

        Never raises: whatever ended the task is logged, and the spool keeps what is left.
        """
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception as e:  # the task died; _run should make this impossible
                self._fault(e)
        await self.spool_memory(grace)
        self._note_pending(force=True)

    async def spool_memory(self, grace: float) -> None:
        """At stop: write what is kept in memory to the spool, if it can take it now."""
        for name, item in sorted(self._memory.items()):
            try:
                await asyncio.wait_for(
                    self._off_loop(functools.partial(self.spool.write, item)), grace
                )
            except (OSError, TimeoutError) as e:
                self.events("mail-lost", logging.ERROR, id=name, subject=item.subject, error=e)
                continue
            del self._memory[name]

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                next_due = await self.deliver_due()
            except Exception as e:  # a bug: log it and back off rather than stop mailing
                self._fault(e)
                self._faults += 1
                next_due = None
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._pause(next_due))

    def _pause(self, next_due: float | None) -> float:
        """Seconds until the next pass: the backoff after a spool fault, else until an item is due
        (at least ``backoff.first``: an item another process is delivering stays due meanwhile)."""
        if self._faults:
            return self.backoff.delay(self._faults)
        if next_due is None:
            return RESCAN
        return min(RESCAN, max(self.backoff.first, next_due - self.clock()))

    async def deliver_due(self) -> float | None:
        """Deliver every due item, oldest first; return when the next one is due (None: none).

        A failure ends the pass (the server is likely down for all of them); a success makes
        every other item due at once (the server is back). An item the spool fails on is held
        back with the backoff and the pass goes on. Never raises an Exception.
        """
        self._pass_faulted = False
        recovered, probe, self._probe = False, self._probe, False
        listed = await self._listing()
        for name in sorted({*listed, *self._memory, *self._writing}):
            if name in self._writing:  # not on disk yet: later ones wait, unless it hangs
                if self.clock() - self._writing[name] < WRITE_PATIENCE:
                    break
                continue
            if name in self._memory:
                result = await self._attempt(self._memory[name], recovered or probe)
            else:
                result = await self._one(name, recovered or probe)
            if result is False or result is WAIT:
                break  # the server is down, or the oldest is not due: the rest wait for it
            probe = probe and result is None
            recovered = recovered or result is True
        next_due = await self._survey()
        self._faults = self._faults + 1 if self._pass_faulted else 0
        self._note_pending()
        return next_due

    async def _listing(self) -> list[str]:
        try:
            return await self._off_loop(self.spool.ids)
        except Exception as e:  # EACCES on the folder, say: back off and look again
            self._pass_faulted = True
            self._fault(e)
            return []

    async def _one(self, name: str, recovered: bool) -> bool | _Wait | None:
        """Deliver item ``name`` if it is due: True sent, False failed (end the pass), WAIT not
        due (the later ones wait for it), None not tried (held back after a spool fault, gone,
        or another process has it)."""
        if name in self._sent:
            await self._discard(name)  # sent earlier; only the file's removal failed
            return None
        hold = self._holds.get(name)
        if hold is not None and hold[1] > self.clock():
            return None
        try:
            claim = await self._off_loop(lambda: self.spool.claim(name))
            if claim is None:
                return None
            fd, item = claim
            try:
                return await self._attempt(item, recovered)
            finally:
                os.close(fd)
        except Exception as e:  # EACCES or EIO on this item, or a bug: hold it back, go on
            self._hold(name, e)
            return None

    async def _attempt(self, item: SpoolItem, recovered: bool) -> bool | _Wait | None:
        if not recovered and item.next_attempt > self.clock():
            # not due: it holds the later ones back, unless the server refused it (5xx)
            return None if item.id in self._refused else WAIT
        try:
            await self.delivery.deliver(item)
        except Exception as e:  # DeliveryError, or anything else the delivery threw
            refused = isinstance(e, DeliveryError) and e.refused
            if refused:
                self._refused.add(item.id)
            else:
                self._refused.discard(item.id)
            await self._defer(item, str(e) if isinstance(e, DeliveryError) else _describe(e))
            return None if refused else False
        self.events(
            "mail-sent",
            id=item.id,
            via=self.delivery.via,
            mail_event=item.event,
            attempts=item.attempts + 1,
            recipients=" ".join(item.recipients),
        )
        self._holds.pop(item.id, None)
        self._refused.discard(item.id)
        if self._memory.pop(item.id, None) is not None:
            self._count = max(0, self._count - 1)
        else:
            await self._discard(item.id)
        return True

    async def _defer(self, item: SpoolItem, error: str) -> None:
        attempts = item.attempts + 1
        delay = self.backoff.delay(attempts)
        self.events(
            "mail-deferred",
            logging.WARNING,
            id=item.id,
            via=self.delivery.via,
            attempt=attempts,
            retry_in=delay,
            error=error,
        )
        later = replace(
            item, attempts=attempts, next_attempt=self.clock() + delay, last_error=error
        )
        if item.id in self._memory:
            self._memory[item.id] = later
            return
        try:
            await self._off_loop(lambda: self.spool.write(later))
        except OSError as e:  # ENOSPC, EIO: the file keeps its old schedule; hold it back here
            self._hold(item.id, e)
            return
        self._holds.pop(item.id, None)

    async def _discard(self, name: str) -> None:
        """Remove a delivered item's file; if that fails, remember never to send it again."""
        try:
            await self._off_loop(lambda: self.spool.remove(name))
        except OSError as e:
            self._sent.add(name)
            self._fault(e, id=name)
            return
        self._sent.discard(name)
        self._count = max(0, self._count - 1)

    async def _survey(self) -> float | None:
        """Count what is waiting and find when the next item is due (None: nothing is)."""
        sent, holds = frozenset(self._sent), dict(self._holds)

        def look() -> tuple[set[str], float | None]:
            names = {n for n in self.spool.ids() if n not in sent}
            due = []
            for name in names:
                held = holds.get(name, (0, 0.0))[1]
                try:
                    item = self.spool.read(name)
                except OSError:  # unreadable: due when its hold ends, if it has one yet
                    due += [held] if name in holds else []
                    continue
                if item is not None:
                    due.append(max(item.next_attempt, held))
            return names, min(due, default=None)

        try:
            names, next_due = await self._off_loop(look)
        except Exception as e:
            self._pass_faulted = True
            self._fault(e)
            return None
        self._count = len(names) + len(self._memory.keys() - names)
        self._holds = {n: h for n, h in self._holds.items() if n in names}
        self._refused &= names | self._memory.keys()
        kept = [i.next_attempt for i in self._memory.values()]
        return min([*kept, *([] if next_due is None else [next_due])], default=None)

    def _hold(self, name: str, error: Exception) -> None:
        """Keep item ``name`` back after a spool fault, with the backoff of a failed delivery."""
        faults = self._holds.get(name, (0, 0.0))[0] + 1
        delay = self.backoff.delay(faults)
        self._holds[name] = (faults, self.clock() + delay)
        self._fault(error, id=name, retry_in=delay)

    def _fault(self, error: Exception, **fields: object) -> None:
        event = "mail-spool-error" if isinstance(error, OSError) else "mail-outbox-error"
        self.events(event, logging.ERROR, **fields, error=_describe(error))

    @staticmethod
    async def _off_loop(fn: Callable[[], T]) -> T:
        """Spool I/O (listing, flock, fsync) in a daemon thread: a slow or hung disk never
        stalls the event loop, nor keeps the process from exiting."""
        return await in_daemon_thread(fn, "ipfailover-spool")

    def _note_pending(self, force: bool = False) -> None:
        if force or self._count != self._reported:
            self._reported = self._count
            self.events("mail-pending", count=self._count, spool=self.spool.path)


class _Wait:
    """The oldest waiting message is not due yet: the later ones wait for it."""


WAIT = _Wait()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def collision_notice(ev: auth.NameCollision, s: Situation, now: float) -> Notice:
    """Another machine sends authentic heartbeats under our own node name (issue 7: clones)."""
    ips = tuple(a.split(":", 1)[1].rsplit("/", 1)[0] for a in s.addresses)
    where = f"{ev.addr[0]} port {ev.addr[1]}" + (f" on {ev.network}" if ev.network else "")
    subject = f"[ipfailover] {s.node}: another machine uses this node name ({ev.addr[0]})"
    intro = (
        f"Authentic, fresh heartbeats carrying this machine's own node name {ev.name!r} arrive\n"
        f"from {where} (boot id {ev.boot.hex()}), which is not a daemon of this host.\n"
        "Two machines share one name: most likely a cloned host name with FAILOVER_NODE_NAME\n"
        "unset. The pair still works (that sender is treated as the primary), but give each\n"
        "machine its own FAILOVER_NODE_NAME and restart both daemons. This mail is sent once\n"
        "per episode; `ipfailover status` shows whether it goes on."
    )
    return Notice("name-collision", "down", ips, subject, f"{intro}\n\n{situation_text(s, now)}\n")
