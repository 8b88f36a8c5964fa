"""failoverd's core, read side: what the monitor's parts keep, read on the monitor itself.

:class:`ipfailover.core.monitor.Monitor` keeps its state in parts it owns (the challenger, the
verifier, the probing and the hand-back). The shells, ``status``, the lab and the tests read it
where they always have, on the monitor: :class:`MonitorView`, its base, gives them read-only
properties over the parts. Nothing here decides anything.
"""

from __future__ import annotations

from collections import OrderedDict

from ipfailover.core import auth
from ipfailover.core.monitor_challenge import Challenger, _PeerNet
from ipfailover.core.monitor_handback import Handback
from ipfailover.core.monitor_probe import Probing
from ipfailover.core.monitor_table import HOLDING, State
from ipfailover.core.monitor_types import Answers, Event, ProbeResult
from ipfailover.core.monitor_verify import Verifier


class MonitorView:
    """Read-only properties over the parts of a monitor."""

    state: State
    challenger: Challenger  # the primary's boots, replay windows, challenges and our nonces
    verifier: Verifier  # which datagrams come from the primary, and which prove it alive
    probing: Probing  # evidence before a takeover (docs/safety.md)
    handback: Handback  # the hold-down, HANDBACK and RELEASED
    _events: list[Event]

    @property
    def holding(self) -> bool:
        return self.state in HOLDING

    @property
    def holddown_until(self) -> float | None:
        return self.handback.holddown_until if self.state is State.HOLDDOWN else None

    @property
    def wants_local_boots(self) -> bool:
        """A datagram carrying our name came from a boot id we do not know: the shell should
        re-read this host's boot ids and call ``set_local_boots``."""
        return self.verifier.identity.wants_local

    def footprint(self) -> dict[str, int]:
        """Entries in each structure that remote input can grow (all bounded; for tests)."""
        ch, v = self.challenger, self.verifier
        return {
            "sources": sum(len(p.sources) for p in ch.peers.values()),
            "windows": len(ch.windows) + (ch.peer_window is not None),
            "boots": len(ch.boots),
            "retired": len(ch.retired) + len(v.left_boots),
            "nonces": len(ch.nonces),
            "held": len(v.held),
            "events": len(self._events),
        }

    @property
    def identity(self) -> auth.Identity:
        return self.verifier.identity

    @property
    def collision(self) -> auth.Collision | None:
        return self.verifier.collision

    @property
    def peer_name(self) -> str | None:
        """The primary's name: FAILOVER_PEER_NAME, or learnt (None until then)."""
        return self.verifier.peer_name

    @property
    def ever_verified(self) -> bool:
        """A heartbeat of the primary was verified since start-up."""
        return self.verifier.ever_verified

    @property
    def peer_boot(self) -> bytes | None:
        """The verified primary's boot id."""
        return self.challenger.peer_boot

    @property
    def peer_seq(self) -> int:
        """The highest sequence number the verified primary's boot sent."""
        return self.challenger.peer_seq

    @property
    def probe_result(self) -> ProbeResult:
        """What the last probe that finished found."""
        return self.probing.result

    @property
    def probe_at(self) -> float | None:
        """When it finished."""
        return self.probing.at

    @property
    def answering(self) -> Answers:
        """What answered it: (address, MACs), sorted."""
        return self.probing.answering

    # Under the names they had when they were the monitor's own (the lab and the tests read them).
    @property
    def _holddown_until(self) -> float | None:
        return self.handback.holddown_until

    @property
    def _probe_out(self) -> int | None:
        return self.probing.out  # the probe the shell is running

    @property
    def _left_boots(self) -> OrderedDict[bytes, None]:
        return self.verifier.left_boots

    @property
    def _warned_boots(self) -> OrderedDict[bytes, None]:
        return self.verifier.warned_boots

    @property
    def _peers(self) -> dict[str, _PeerNet]:
        return self.challenger.peers

    @property
    def _windows(self) -> OrderedDict[tuple[str, bytes], auth.ReplayWindow]:
        return self.challenger.windows

    @property
    def _nonces(self) -> dict[bytes, float]:
        return self.challenger.nonces
