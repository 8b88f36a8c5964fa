"""heartbeatd's core, its listeners: the failoverds that challenge it, by (name, boot id).

Every heartbeat echoes the latest nonce of each listener (at most ``wire.MAX_ECHOES``), so the
:class:`Roster` a :class:`ipfailover.core.sender.Sender` owns is bounded: BOOTS_PER_LISTENER boots
of one name, MAX_LISTENERS in all, the least recently heard going first. An entry that goes (it
expired or was evicted) is remembered, retired, for as long as a replay of its challenges could
still pass the echo check, so that a replay cannot bring it back (and its "holding" flag).
"""

from __future__ import annotations

from collections import OrderedDict

from ipfailover.core import wire
from ipfailover.core.sender_types import BOOTS_PER_LISTENER, MAX_LISTENERS, MAX_RETIRED, _Listener

Key = tuple[str, bytes]  # (listener, boot id)


class Roster:
    """The listeners' entries, and the retired ones."""

    def __init__(self) -> None:
        self.entries: OrderedDict[Key, _Listener] = OrderedDict()
        # (listener, boot) -> (its highest challenge seq, the highest of ours it echoed), kept
        # after the entry goes for as long as a replay of its challenges could pass the echo check
        self.retired: OrderedDict[Key, tuple[int, int]] = OrderedDict()

    def add(self, msg: wire.Message, now: float, expires: float) -> _Listener:
        """The entry of a CHALLENGE from a listener boot we have no entry for."""
        key = (msg.sender, msg.boot_id)
        retired = self.retired.get(key)
        if retired is not None and msg.seq <= retired[0]:
            # Its entry expired, but this challenge is no newer than the last one it sent: a
            # replay, which must not bring back a listener (and its "holding" flag).
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"challenge seq {msg.seq}")
        self.retired.pop(key, None)
        entry = self.entries[key] = _Listener(
            seq=msg.seq,
            nonce=msg.nonce,
            updated=now,
            expires=expires,
            holding=msg.holding,
            echo_seq=msg.echo_seq,
        )
        self._evict(msg.sender)
        return entry

    def _evict(self, listener: str) -> None:
        boots = [k for k in self.entries if k[0] == listener]
        for key in boots[:-BOOTS_PER_LISTENER]:
            self._retire(key)
        while len(self.entries) > MAX_LISTENERS:
            self._retire(next(iter(self.entries)))

    def _retire(self, key: Key) -> None:
        """Drop a listener entry, remembering its sequence numbers for the echo horizon."""
        entry = self.entries.pop(key)
        self.retired[key] = (entry.seq, entry.echo_seq)
        self.retired.move_to_end(key)
        while len(self.retired) > MAX_RETIRED:
            self.retired.popitem(last=False)

    def expire(self, now: float, seq: int, horizon: int) -> None:
        """Retire the entries that expired by ``now``; forget the retired ones whose challenges
        can no longer pass the echo check (``seq``: our latest; ``horizon``: how far back)."""
        for key in [k for k, e in self.entries.items() if e.expires <= now]:
            self._retire(key)
        for key in [k for k, (_, echo) in self.retired.items() if seq - echo > horizon]:
            del self.retired[key]

    def holders(self) -> list[str]:
        """The listeners whose latest challenge says they hold our addresses."""
        return [name for (name, _), e in self.entries.items() if e.holding]

    def echoes(self) -> tuple[bytes, ...]:
        """The nonces a heartbeat echoes: the latest of each entry, the most recent last."""
        return tuple(entry.nonce for entry in self.entries.values())[-wire.MAX_ECHOES :]
