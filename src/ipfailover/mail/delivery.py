"""Handing a spooled message on: over SMTP, or through ``FAILOVER_NOTIFY_PROGRAM``.

:class:`SmtpDelivery` runs stdlib ``smtplib`` in a daemon thread with a socket timeout, with
optional STARTTLS (never falling back to plain text) and login from a credentials file; a hung
server can delay nothing but the mail, and cannot keep the daemon from exiting.
:class:`ProgramDelivery` runs the admin's program, as Apple's ``NotifyFailover`` was, with
Apple's arguments ``up|down ip...`` and the message on stdin (exit 0 means delivered).
:func:`delivery_for` picks one. A failed attempt raises :class:`DeliveryError`; the retry with
backoff is the outbox's (:mod:`ipfailover.mail.outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ipfailover.core import config
from ipfailover.mail.message import MailSettings
from ipfailover.mail.spool import SpoolItem
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks

log = logging.getLogger("ipfailover.mail")
T = TypeVar("T")

SMTP_TIMEOUT = 30.0  # seconds per SMTP socket operation
PROGRAM_TIMEOUT = 60.0  # seconds FAILOVER_NOTIFY_PROGRAM may take per message


class DeliveryError(Exception):
    """One delivery attempt failed; the message says why (it goes to the log and the spool).

    ``refused``: the server answered and refused this message (a 5xx to its recipients or its
    data), so the next message need not wait for it.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


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
        import smtplib  # smtplib and ssl only when a mail is sent (start-up time, memory)
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
