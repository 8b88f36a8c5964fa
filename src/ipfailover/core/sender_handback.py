"""heartbeatd's core, the hand-back made before it is broken: a listener that holds our
addresses sends HANDBACK; we ask the shell to announce them (:class:`Announce` with ``handback``)
and, once it has sent the first round (:meth:`HandbackReplies.handback_announced`), confirm with
ANNOUNCED, after which the listener deletes them (``docs/protocol.md``, the release handshake).

:class:`HandbackReplies` is a base of :class:`ipfailover.core.sender.Sender`: the same object,
its hand-back methods kept here.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from ipfailover.core import wire
from ipfailover.core.sender_listeners import Roster
from ipfailover.core.sender_types import (
    CONFIRM_COPIES,
    HANDBACK_ADDRS,
    MAX_HANDBACKS,
    Addr,
    Announce,
    AnnounceReason,
    Event,
    SenderConfig,
    _Handback,
)


class HandbackReplies:
    """The sender's answers to HANDBACK (what it keeps is the sender's)."""

    cfg: SenderConfig
    boot_id: bytes
    seq: int
    counters: Counter[str]
    roster: Roster
    _handbacks: OrderedDict[bytes, _Handback]
    _events: list[Event]
    _out: list[tuple[bytes, Addr]]

    @property
    def stopped(self) -> bool:
        raise NotImplementedError

    def _echoes_recent_beat(self, msg: wire.Message) -> bool:
        raise NotImplementedError

    def handback_announced(self, now: float, handback: bytes, ok: bool = True) -> None:
        """The shell sent the first round of the announcement that ``handback`` asked for
        (``ok``), or could not: confirm it to the listener, which then lets our addresses go.
        Without a confirmation the listener falls back to releasing first after a bound."""
        hb = self._handbacks.get(handback)
        if hb is None or hb.confirmed or self.stopped:
            return
        if not ok:
            self.counters["handback-announce-failed"] += 1
            return
        hb.confirmed = True
        self.counters["handbacks-confirmed"] += 1
        self._confirm(handback, hb, hb.addrs)

    def _handback(self, msg: wire.Message, addr: Addr, now: float) -> None:
        """A listener that holds our addresses asks us to announce them before it lets go.

        Accepted only if it echoes our boot and a recent beat (as RELEASED), comes from a
        listener boot whose latest challenge says it holds our addresses, and is newer than that
        challenge: a replay is refused once the listener's next challenge has arrived, and its
        copies (the same id over another network) are acted on once."""
        if not self._echoes_recent_beat(msg):
            raise wire.RemoteProtocolError(wire.Reason.STALE, "HANDBACK echoes no recent beat")
        key = (msg.sender, msg.boot_id)
        entry = self.roster.entries.get(key)
        if entry is None or not entry.holding:
            raise wire.RemoteProtocolError(
                wire.Reason.UNEXPECTED, "HANDBACK from a listener that does not hold our addresses"
            )
        hb = self._handbacks.get(msg.nonce)
        if hb is not None and hb.listener == key:
            self.counters["handback-copies"] += 1
            if addr not in hb.addrs and len(hb.addrs) < HANDBACK_ADDRS:
                hb.addrs.append(addr)
                if hb.confirmed:
                    self._confirm(msg.nonce, hb, [addr])
            return
        if hb is not None or msg.seq <= entry.seq:
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"HANDBACK seq {msg.seq}")
        self._handbacks[msg.nonce] = _Handback(listener=key, seq=msg.seq, addrs=[addr])
        while len(self._handbacks) > MAX_HANDBACKS:
            self._handbacks.popitem(last=False)
        self.counters["handbacks"] += 1
        self._events.append(
            Announce(
                reason=AnnounceReason.HANDBACK, at=now, listener=msg.sender, handback=msg.nonce
            )
        )

    def _confirm(self, handback: bytes, hb: _Handback, addrs: list[Addr]) -> None:
        """ANNOUNCED to each of ``addrs``: bound to the listener's boot and its HANDBACK."""
        for addr in addrs:
            self.seq += 1
            msg = wire.Message(
                type=wire.MsgType.ANNOUNCED,
                sender=self.cfg.node,
                boot_id=self.boot_id,
                seq=self.seq,
                interval=self.cfg.interval,
                nonce=handback,
                echo_boot=hb.listener[1],
                echo_seq=hb.seq,
            )
            data = wire.encode(msg, self.cfg.key)
            self._out += [(data, addr)] * CONFIRM_COPIES
