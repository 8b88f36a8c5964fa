"""failoverd: the secondary's daemon. Watches the primary; takes over its addresses when it dies.

The asyncio shell around :class:`ipfailover.core.monitor.Monitor`. It feeds the core the loop's
clock, each datagram with the interface it arrived on, and the outcome of each takeover or release,
which :class:`ipfailover.failover.executor.Executor` carries out (Test gate, scripts, netlink,
announcements, mail). Mail is spooled and delivered in the background
(:class:`ipfailover.mail.outbox.Outbox`).

The modules: ``daemon`` (:class:`Failoverd`: the core's inputs and outputs, transitions,
reloads), ``evidence`` (the probe before a takeover, conflicts while holding), ``mailing`` (network
mail, the situation), ``checks`` (pairs and warnings, at start-up and on reload) and ``startup``
(``main``).
"""

from ipfailover.failoverd.checks import log_check_warnings, resolve_pairs
from ipfailover.failoverd.daemon import HISTORY, MAIL_STOP_GRACE, WATCHED, Failoverd
from ipfailover.failoverd.evidence import BLOCKED_WHY
from ipfailover.failoverd.startup import DESCRIPTION, amain, build_parser, main, take_lock

__all__ = [
    "BLOCKED_WHY",
    "DESCRIPTION",
    "HISTORY",
    "MAIL_STOP_GRACE",
    "WATCHED",
    "Failoverd",
    "amain",
    "build_parser",
    "log_check_warnings",
    "main",
    "resolve_pairs",
    "take_lock",
]
