"""failoverd's mail outside transitions: one per episode of a network's anomalies, and the
situation (who, about whom, when each network last heard the primary) every mail starts with."""

from __future__ import annotations

import logging
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from ipfailover import mail
from ipfailover.core import config, episodes
from ipfailover.core.monitor import Monitor
from ipfailover.shell import runtime as daemon
from ipfailover.shell.clock import Clock

log = logging.getLogger("ipfailover.failoverd")


class MailMixin:
    """Failoverd's network mail and situation (a part of :class:`Failoverd`)."""

    if TYPE_CHECKING:
        cfg: config.Config
        core: Monitor
        clock: Clock
        events: daemon.EventLog
        outbox: mail.Outbox
        notices: episodes.NetworkNotices
        notices_timer: daemon.Timer
        _heard: dict[str, float]
        _plain: tuple[str, ...]

        @property
        def node(self) -> str: ...

        def _spawn(self, coro: Coroutine[object, object, None]) -> None: ...

    def _on_notices_timer(self) -> None:
        self._network_mail(self.notices.handle_timer(self.clock.monotonic()))

    def _network_mail(self, summaries: list[episodes.Summary]) -> None:
        """Mail what the episode policy says (one mail per episode, not one per flap)."""
        wall = daemon.WallClock.of(self.clock)
        for summary in summaries:
            if summary.reason != "start":
                self.events(
                    "network-settled" if summary.reason == "settled" else "network-flapping",
                    logging.INFO if summary.kind == "recovered" else logging.WARNING,
                    network=summary.network,
                    peer=self.core.peer_name,
                    state="heard" if summary.kind == "recovered" else "silent",
                    losses=summary.anomalies,
                    returns=summary.recoveries,
                    since=mail.format_time(wall.offset + summary.started),
                )
            notice = mail.network_notice(
                summary.kind,
                summary.network,
                self._situation(),
                self.clock.time(),
                summary,
                wall=lambda t: t + wall.offset,
                settle=self.notices.settle,
            )
            self._spawn(self._notify(notice))
        self.notices_timer.arm(self.notices.get_timer())

    def _note_heard(self) -> None:
        """Keep our own copy of when each network last heard the primary, for the mail.

        The detector forgets on LEAVING; the mail about that takeover should still say when.
        """
        for name, view in self.core.detector.networks.items():
            if view.last_heard is not None:
                self._heard[name] = max(view.last_heard, self._heard.get(name, view.last_heard))

    def _situation(self) -> mail.Situation:
        """Who, about whom, which addresses, and when each network last heard the primary."""
        now_loop, now_wall = self.clock.monotonic(), self.clock.time()
        self._note_heard()
        heard = tuple(
            (name, now_wall - (now_loop - self._heard[name]) if name in self._heard else None)
            for name in sorted(self.core.detector.networks)
        )
        return mail.Situation(
            node=self.node,
            host=socket.gethostname(),
            peer=self.core.peer_name or str(self.cfg.peer_ip),
            addresses=self._plain,
            heard=heard,
            peer_verified=self.core.ever_verified,
        )

    async def _notify(self, notice: mail.Notice) -> None:
        try:
            await self.outbox.submit(notice)
        except OSError as e:
            self.events("mail-spool-error", logging.ERROR, error=e, subject=notice.subject)
