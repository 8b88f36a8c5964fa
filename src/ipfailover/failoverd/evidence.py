"""failoverd's evidence before a takeover and its watch for conflicts while holding
(docs/safety.md): the probe of the link, a takeover held back, other MACs claiming our addresses,
and the re-announcements that defend them."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ipfailover.core.monitor import (
    DEFEND_INTERVAL,
    REPROBE_MIN,
    AddressAnswers,
    AddressConflict,
    Defend,
    Probe,
    State,
    Trigger,
)
from ipfailover.failover import executor as transition
from ipfailover.failover import notices
from ipfailover.failoverd.mailing import MailMixin
from ipfailover.shell import linkwatch, netif, runtime

log = logging.getLogger("ipfailover.failoverd")

#: Why failoverd holds back (state BLOCKED), by the trigger that blocked it (docs/safety.md).
CONFLICT_MAIL_GATHER = 1.0
"""Seconds from the first address conflict to its mail: the conflicts of that while, one mail
per claiming MAC."""

BLOCKED_WHY = {
    Trigger.ANSWERS_NEVER_VERIFIED: "its address answers, but no heartbeat was ever verified: "
    "check the firewall, key, port and FAILOVER_PEER_IP",
    Trigger.ANSWERS_REFUSED: "its address still answers after its heartbeats stopped, and "
    "FAILOVER_TAKE_ANSWERING=no: taking over once it stops answering",
}


class EvidenceMixin(MailMixin):
    """Failoverd's probe, blocked takeovers and conflicts (a part of :class:`Failoverd`)."""

    if TYPE_CHECKING:
        loop: asyncio.AbstractEventLoop
        assignments: list[netif.Assignment]
        backend: transition.AddressBackend
        _ours: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]
        _by_text: dict[str, netif.Assignment]
        _claims: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]]
        _watches: list[linkwatch.LinkWatch]
        _conflict_mail: dict[str, list[str]]
        conflict_timer: runtime.Timer

        def _flush(self) -> None: ...

    async def _probe(self, ev: Probe) -> None:
        """Probe the link for the addresses to be taken; tell the core what answered."""
        wait = linkwatch.probe_wait(self.core.cfg.deadtime)
        try:
            answers, ok = await linkwatch.probe(self.assignments, wait)
        except Exception as e:  # a bug must not leave the core probing forever
            log.exception("probe failed")
            self.events("probe-error", logging.ERROR, error=repr(e))
            answers, ok = {}, False
        self.events(
            "probe",
            logging.DEBUG,
            answered=" ".join(f"{a}={','.join(m)}" for a, m in sorted(answers.items())) or None,
            ok=ok,
            wait=wait,
        )
        self.core.probe_done(self.clock.monotonic(), ev.id, answers, ok)
        self._flush()

    def _address_answers(self, ev: AddressAnswers) -> None:
        answering = notices.answering_text(ev.answering)
        if ev.taking:
            self.events(
                "address-answers",
                logging.WARNING,
                answering=answering,
                verified_before="yes",
                action="taking-over",
            )
            return  # the takeover's own mail says it
        why = (
            BLOCKED_WHY[Trigger.ANSWERS_NEVER_VERIFIED]
            if not ev.verified_before
            else BLOCKED_WHY[Trigger.ANSWERS_REFUSED]
        )
        self.events("takeover-blocked", logging.ERROR, answering=answering, why=why)
        s = self._situation()
        reprobe = max(REPROBE_MIN, self.core.cfg.period)
        notice = notices.blocked_notice(ev.answering, why, s, reprobe, self.clock.time())
        self._spawn(self._notify(notice))

    def _address_conflict(self, ev: AddressConflict) -> None:
        self.events(
            "address-conflict",
            logging.WARNING,
            address=ev.address,
            mac=ev.mac,
            state=ev.state.value,
            defending="yes" if ev.state is State.ACTIVE else "no",
        )
        # One mail per MAC for the conflicts of a short while: a returning primary claims all
        # its addresses at once (1,024 addresses made 1,024 mails).
        addresses = self._conflict_mail.setdefault(ev.mac, [])
        if ev.address not in addresses:
            addresses.append(ev.address)
        if self.conflict_timer.deadline is None:
            self.conflict_timer.arm(self.loop.time() + CONFLICT_MAIL_GATHER)

    def _send_conflict_mail(self) -> None:
        """Mail the conflicts gathered since the first one: one notice per claiming MAC."""
        self.conflict_timer.arm(None)
        gathered, self._conflict_mail = self._conflict_mail, {}
        if not gathered:
            return
        s = self._situation()
        for mac, addresses in gathered.items():
            notice = notices.conflict_notice(
                tuple(addresses), mac, s, DEFEND_INTERVAL, self.clock.time()
            )
            self._spawn(self._notify(notice))

    def _defend(self, ev: Defend) -> None:
        a = self._by_text.get(ev.address)
        if a is not None:
            self.events("address-defended", logging.WARNING, address=a)
            self._spawn(self._announce_once(a))

    async def _announce_once(self, a: netif.Assignment) -> None:
        await self.backend.announce(a, 1, 0.0)

    def _watch(self, on: bool) -> None:
        """Watch the held addresses' interfaces for other MACs claiming them (or stop)."""
        if on and not self._watches:
            for ifname in sorted({a.ifname for a in self.assignments}):
                try:
                    self._watches.append(
                        linkwatch.LinkWatch(ifname, _own_macs(ifname), self._on_claim, self.loop)
                    )
                except OSError as e:
                    self.events("watch-error", logging.WARNING, interface=ifname, error=e)
        elif not on and self._watches:
            for watch in self._watches:
                watch.close()
            self._watches = []

    def _on_claim(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, mac: str) -> None:
        # A returning primary announces a thousand addresses in a burst: a set lookup per
        # frame, and one flush for the batch the watch sockets are draining.
        if address in self._ours:
            self._claims.append((address, mac))
            if len(self._claims) == 1:
                self.loop.call_soon(self._claims_done)

    def _claims_done(self) -> None:
        claims, self._claims = self._claims, []
        now = self.clock.monotonic()
        for address, mac in claims:
            self.core.address_claimed(now, str(address), mac)
        self._flush()


def _own_macs(ifname: str) -> list[bytes]:
    """This interface's MAC (frames from it are ours, not a conflict)."""
    try:
        text = (Path("/sys/class/net") / ifname / "address").read_text().strip()
        return [bytes.fromhex(text.replace(":", ""))]
    except (OSError, ValueError):
        return []
