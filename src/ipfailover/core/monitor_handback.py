"""failoverd's core, giving the addresses back: the hold-down, the hand-back and RELEASED.

While the monitor holds the primary's addresses and hears it again, it waits out the failback
delay (HOLDDOWN) and counts the rounds in which the primary was heard: only a primary heard in
STEADY_SHARE of them is steady, otherwise the hold-down starts over (a flapping cable). Then it
asks the primary to announce its addresses first (HANDBACK, make before break; ``docs/protocol.md``)
and releases when the primary confirms (ANNOUNCED) or after :func:`handback_wait`. Once released
it tells the primary (RELEASED, RELEASED_COPIES times one period apart; all at once when
stopping). The :class:`Handback` a :class:`ipfailover.core.monitor.Monitor` owns keeps this
bookkeeping; the monitor decides when each step is due.
"""

from __future__ import annotations

from ipfailover.core import wire
from ipfailover.core.monitor_challenge import Challenger
from ipfailover.core.monitor_table import State
from ipfailover.core.monitor_types import (
    HANDBACK_COPIES,
    HANDBACK_WAIT_MAX,
    HANDBACK_WAIT_MIN,
    RELEASED_COPIES,
    STEADY_SHARE,
    MonitorConfig,
    Outbox,
)


def handback_wait(period: float) -> float:
    """How long a hand-back waits for ANNOUNCED before it releases anyway."""
    return min(max(period, HANDBACK_WAIT_MIN), HANDBACK_WAIT_MAX)


class Handback:
    """The hold-down's rounds, the HANDBACK under way and the RELEASED notices still due."""

    def __init__(self, ch: Challenger) -> None:
        self.challenger = ch  # sends HANDBACK and RELEASED to the verified primary
        self.holddown_until: float | None = None
        self.rounds_heard = 0  # rounds of the hold-down in which the primary was heard
        self.round_heard = float("-inf")  # the evidence of the last one counted
        self.round_issued = float("-inf")  # and the issue time of the nonce it echoed
        self.echo_issued = float("-inf")  # the issue time of the nonce the last heartbeat echoed
        self.released_due: list[float] = []
        self.release_id = b""
        self.handback_id = b""  # the id of the last HANDBACK we sent
        self.handback_until: float | None = None  # while HANDBACK: when we release anyway

    def start_holddown(self, now: float, cfg: MonitorConfig, last_evidence: float | None) -> None:
        self.holddown_until = now + cfg.failback_delay
        self.rounds_heard = 1  # the heartbeat that started it
        self.round_heard = last_evidence or now
        self.round_issued = self.echo_issued

    def heard(self, evidence: float, issued: float, cfg: MonitorConfig, holding_down: bool) -> None:
        """A verified heartbeat echoing a nonce issued at ``issued``; ``holding_down``: in
        HOLDDOWN, where it may count as a new round."""
        self.echo_issued = issued
        if (
            holding_down
            and evidence >= self.round_heard + cfg.period / 2
            and self.echo_issued > self.round_issued
        ):
            # A new round heard: not the same one on another network, nor a second heartbeat
            # echoing the same challenge (heartbeatd answers a holder's challenge at once, and
            # its regular beat echoes that challenge again up to a period later)
            self.round_heard, self.round_issued = evidence, self.echo_issued
            self.rounds_heard += 1

    def steady(self, cfg: MonitorConfig) -> bool:
        """The primary was heard in at least STEADY_SHARE of the hold-down's rounds: a hold-down
        counts only a primary heard at (nearly) every interval. A flapping cable (0.5 s out, 0.5 s
        in) lets at most half of them through; random loss of 30 % of all datagrams still lets
        nine rounds in ten through on one of two networks (half of them: three in four)."""
        rounds = cfg.failback_delay / cfg.period
        return self.rounds_heard >= STEADY_SHARE * rounds

    def ask(self, now: float, cfg: MonitorConfig, box: Outbox) -> None:
        """HANDBACK: ask the primary to announce its addresses before we delete ours (make
        before break), on every network where we verified it."""
        self.handback_id = box.rng(wire.NONCE_SIZE)
        self.handback_until = now + handback_wait(cfg.period)
        if self.challenger.to_primary(
            wire.MsgType.HANDBACK, self.handback_id, HANDBACK_COPIES, box
        ):
            box.counters["handback-sent"] += 1

    def announced(self, msg: wire.Message, state: State, box: Outbox) -> bool:
        """ANNOUNCED: the primary confirms that it announced its addresses, as our HANDBACK
        asked; only from the verified primary's boot, to our boot, for the hand-back under way.
        True if it ends the hand-back (in HANDBACK); raises what is to be dropped."""
        ch = self.challenger
        if msg.boot_id != ch.peer_boot or msg.echo_boot != ch.boot_id:
            raise wire.RemoteProtocolError(
                wire.Reason.STALE, "ANNOUNCED not from the verified primary to this boot"
            )
        if not self.handback_id or msg.nonce != self.handback_id:
            raise wire.RemoteProtocolError(wire.Reason.STALE, "ANNOUNCED answers no hand-back")
        if state is not State.HANDBACK:
            box.counters["announced-late"] += 1  # its copy, or after we released anyway
            return False
        if not ch.window(msg.sender, msg.boot_id).accept(msg.seq):
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"seq {msg.seq} seen or too old")
        box.counters["announced"] += 1
        return True

    def timers(self, state: State) -> list[float]:
        """When the monitor's timer is due for us in ``state``."""
        times = self.released_due[:1]
        if state is State.HOLDDOWN and self.holddown_until is not None:
            times.append(self.holddown_until)
        if state is State.HANDBACK and self.handback_until is not None:
            times.append(self.handback_until)
        return times

    def released(self, now: float, cfg: MonitorConfig, box: Outbox) -> None:
        """We released: RELEASED now, and again each period until RELEASED_COPIES went out."""
        self.release_id = box.rng(wire.NONCE_SIZE)
        self.send_released(box)
        self.released_due = [now + i * cfg.period for i in range(1, RELEASED_COPIES)]

    def released_stopping(self, box: Outbox) -> None:
        """We released because we stop: the primary may be waiting for RELEASED to announce
        again. There is no later round to repeat it in, so the copies go now."""
        self.release_id = box.rng(wire.NONCE_SIZE)
        for _ in range(RELEASED_COPIES):
            self.send_released(box)

    def resend_due(self, now: float, box: Outbox) -> None:
        """The copies of RELEASED that are due by ``now``."""
        while self.released_due and self.released_due[0] <= now:
            self.released_due.pop(0)
            self.send_released(box)

    def send_released(self, box: Outbox) -> None:
        if self.challenger.to_primary(wire.MsgType.RELEASED, self.release_id, 1, box):
            box.counters["released-sent"] += 1
