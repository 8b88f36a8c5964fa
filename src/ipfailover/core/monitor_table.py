"""failoverd's state machine: its states, the triggers that move it and the one table of moves.

:class:`ipfailover.core.monitor.Monitor` fires a trigger through :data:`TRANSITIONS`; a pair the
table does not have raises :class:`ipfailover.core.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum

__all__ = [
    "BUSY",
    "HOLDING",
    "PROBE_VERDICTS",
    "TRANSITIONS",
    "State",
    "Trigger",
]


class State(enum.Enum):
    STANDBY = "standby"  # not holding; the primary is alive (or we are in the start-up grace)
    PROBING = "probing"  # the primary is silent; the shell checks whether its addresses answer
    BLOCKED = "blocked"  # not taking over: an address answers (see docs/safety.md); re-probing
    ACQUIRING = "acquiring"  # the shell is taking the addresses over
    ACTIVE = "active"  # holding; the primary is silent
    HOLDDOWN = "holddown"  # holding; the primary is back, waiting out the failback delay
    HANDBACK = "handback"  # holding; the primary was asked to announce first (make before break)
    RELEASING = "releasing"  # the shell is handing the addresses back
    DECLINED = "declined"  # a takeover was refused (Test said no, or it failed); waits for the peer
    STOPPING = "stopping"  # releasing because we are shutting down
    STOPPED = "stopped"


class Trigger(enum.Enum):
    PEER_SILENT = "peer-silent"
    NO_ANSWER = "no-answer"  # the probe found no address answering (or could not probe)
    ANSWERS_NEVER_VERIFIED = "answers-never-verified"  # an address answers; primary never heard
    ANSWERS_AFTER_VERIFIED = "answers-after-verified"  # it answers; the primary was heard before
    ANSWERS_REFUSED = "answers-refused"  # as above, but FAILOVER_TAKE_ANSWERING=no
    PEER_LEAVING = "peer-leaving"
    PEER_CUT_OFF = "peer-cut-off"  # the primary says it just lost carrier on every network
    PEER_HEARD = "peer-heard"
    HOLDDOWN_EXPIRED = "holddown-expired"
    ANNOUNCED = "announced"  # the primary confirmed it announced its addresses (ANNOUNCED)
    HANDBACK_TIMEOUT = "handback-timeout"  # no confirmation within the bound: release anyway
    ACQUIRED = "acquired"
    ACQUIRE_DECLINED = "acquire-declined"
    RETRY = "retry"
    RELEASED = "released"
    RELEASE_DECLINED = "release-declined"
    SHUTDOWN = "shutdown"


S, T = State, Trigger
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.STANDBY, T.PEER_SILENT): S.PROBING,
    # the primary said it is going (authenticated, fresh): no probe, its address still answers
    (S.STANDBY, T.PEER_LEAVING): S.ACQUIRING,
    # the primary says its cables were all out (authenticated, fresh): it will flap again, most
    # likely; take over now rather than at whichever later cut outlasts the dead time
    (S.STANDBY, T.PEER_CUT_OFF): S.ACQUIRING,
    (S.STANDBY, T.SHUTDOWN): S.STOPPED,
    (S.PROBING, T.NO_ANSWER): S.ACQUIRING,
    (S.PROBING, T.ANSWERS_AFTER_VERIFIED): S.ACQUIRING,
    (S.PROBING, T.ANSWERS_NEVER_VERIFIED): S.BLOCKED,
    (S.PROBING, T.ANSWERS_REFUSED): S.BLOCKED,
    (S.PROBING, T.PEER_HEARD): S.STANDBY,
    (S.PROBING, T.PEER_LEAVING): S.ACQUIRING,
    (S.PROBING, T.PEER_CUT_OFF): S.ACQUIRING,
    (S.PROBING, T.SHUTDOWN): S.STOPPED,
    (S.BLOCKED, T.NO_ANSWER): S.ACQUIRING,
    (S.BLOCKED, T.ANSWERS_AFTER_VERIFIED): S.ACQUIRING,  # a reload set take_answering again
    (S.BLOCKED, T.PEER_HEARD): S.STANDBY,
    (S.BLOCKED, T.PEER_LEAVING): S.ACQUIRING,
    (S.BLOCKED, T.SHUTDOWN): S.STOPPED,
    (S.ACQUIRING, T.ACQUIRED): S.ACTIVE,
    (S.ACQUIRING, T.ACQUIRE_DECLINED): S.DECLINED,
    (S.DECLINED, T.RETRY): S.PROBING,
    (S.ACTIVE, T.PEER_HEARD): S.HOLDDOWN,
    (S.ACTIVE, T.SHUTDOWN): S.STOPPING,
    (S.HOLDDOWN, T.PEER_SILENT): S.ACTIVE,
    (S.HOLDDOWN, T.PEER_LEAVING): S.ACTIVE,
    (S.HOLDDOWN, T.PEER_CUT_OFF): S.HOLDDOWN,  # not steady: the hold-down starts over
    (S.HOLDDOWN, T.HOLDDOWN_EXPIRED): S.HANDBACK,
    (S.HOLDDOWN, T.SHUTDOWN): S.STOPPING,
    # make before break: the primary announces first, then we delete (docs/protocol.md)
    (S.HANDBACK, T.ANNOUNCED): S.RELEASING,
    (S.HANDBACK, T.HANDBACK_TIMEOUT): S.RELEASING,  # today's order: delete, then RELEASED
    (S.HANDBACK, T.PEER_SILENT): S.ACTIVE,
    (S.HANDBACK, T.PEER_LEAVING): S.ACTIVE,
    (S.HANDBACK, T.PEER_CUT_OFF): S.ACTIVE,
    (S.HANDBACK, T.SHUTDOWN): S.STOPPING,
    (S.RELEASING, T.RELEASED): S.STANDBY,
    (S.RELEASING, T.RELEASE_DECLINED): S.ACTIVE,
    (S.DECLINED, T.PEER_HEARD): S.STANDBY,
    (S.DECLINED, T.SHUTDOWN): S.STOPPED,
    (S.STOPPING, T.RELEASED): S.STOPPED,
    (S.STOPPING, T.RELEASE_DECLINED): S.STOPPED,
}
del S, T

#: Triggers that end a probe (PROBING or BLOCKED) with its verdict.
PROBE_VERDICTS = frozenset(
    {
        Trigger.NO_ANSWER,
        Trigger.ANSWERS_NEVER_VERIFIED,
        Trigger.ANSWERS_AFTER_VERIFIED,
        Trigger.ANSWERS_REFUSED,
    }
)

#: States in which the addresses are (or are being made) ours.
HOLDING = frozenset(
    {
        State.ACQUIRING,
        State.ACTIVE,
        State.HOLDDOWN,
        State.HANDBACK,
        State.RELEASING,
        State.STOPPING,
    }
)
#: States in which the shell is carrying out a transition; a shutdown waits for them.
BUSY = frozenset({State.ACQUIRING, State.RELEASING, State.STOPPING})
