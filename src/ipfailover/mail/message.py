"""The mail for a notice: the notifier's settings, the RFC 5322 message and its spool item.

:class:`MailSettings` is the notifier's ``FAILOVER_*`` variables, parsed once;
:func:`build_message` addresses a :class:`~ipfailover.mail.notice.Notice` to
``FAILOVER_EMAIL_RECIPIENT`` (CRLF line endings, ready for SMTP), and :func:`make_item` wraps it
with its envelope into the :class:`~ipfailover.mail.spool.SpoolItem` that is spooled and
delivered.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ipfailover.core import config
from ipfailover.mail.notice import Notice
from ipfailover.mail.spool import SpoolItem

if TYPE_CHECKING:  # email is imported when a mail is built: a failoverd that never mails never
    # loads it (start-up time, memory)
    from email.message import EmailMessage


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
