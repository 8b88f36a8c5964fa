"""Notices: the mail text, the on-disk spool and background delivery.

The layer's parts, each in its own module:

* :mod:`~ipfailover.mail.notice` -- what to tell the admin (``Notice``, ``Situation``, the texts);
* :mod:`~ipfailover.mail.message` -- the notifier's settings and the RFC 5322 message;
* :mod:`~ipfailover.mail.spool` -- the spool folder, one atomically written file per message;
* :mod:`~ipfailover.mail.delivery` -- handing a message on, over SMTP or the notify program;
* :mod:`~ipfailover.mail.outbox` -- the background task that delivers in order, with backoff;

The names the daemons and tools use are exported here (``from ipfailover import mail``), so
callers need not know which module holds what.
"""

from ipfailover.mail.delivery import (
    PROGRAM_TIMEOUT,
    SMTP_TIMEOUT,
    Delivery,
    DeliveryError,
    ProgramDelivery,
    SmtpDelivery,
    delivery_for,
    in_daemon_thread,
    notify_program_problem,
    read_credentials,
)
from ipfailover.mail.message import MailSettings, build_message, make_item
from ipfailover.mail.notice import (
    Notice,
    Situation,
    collision_notice,
    command_notice,
    episode_text,
    format_time,
    network_notice,
    situation_text,
)
from ipfailover.mail.outbox import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    MEMORY_MAX,
    RESCAN,
    WRITE_PATIENCE,
    Backoff,
    Outbox,
)
from ipfailover.mail.spool import SPOOL_VERSION, Spool, SpoolItem
from ipfailover.shell.clock import Clock, SystemClock

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "MEMORY_MAX",
    "PROGRAM_TIMEOUT",
    "RESCAN",
    "SMTP_TIMEOUT",
    "SPOOL_VERSION",
    "WRITE_PATIENCE",
    "Backoff",
    "Clock",
    "Delivery",
    "DeliveryError",
    "MailSettings",
    "Notice",
    "Outbox",
    "ProgramDelivery",
    "Situation",
    "SmtpDelivery",
    "Spool",
    "SpoolItem",
    "SystemClock",
    "build_message",
    "collision_notice",
    "command_notice",
    "delivery_for",
    "episode_text",
    "format_time",
    "in_daemon_thread",
    "make_item",
    "network_notice",
    "notify_program_problem",
    "read_credentials",
    "situation_text",
]
