"""heartbeatd's state machine: its states, the triggers that move it and the one table of moves.

:class:`ipfailover.core.sender.Sender` fires a trigger through :data:`TRANSITIONS`; a pair the
table does not have raises :class:`ipfailover.core.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum

__all__ = [
    "TRANSITIONS",
    "State",
    "Trigger",
]


class State(enum.Enum):
    AWAITING = "awaiting"  # beating; an announcement waits to hear whether a listener holds ours
    BEATING = "beating"
    LEFT = "left"  # LEAVING sent (a graceful stop): nothing more is sent or announced


class Trigger(enum.Enum):
    LISTENER_HEARD = "listener-heard"  # a challenge after the wait began: announce or defer
    ANNOUNCE_DUE = "announce-due"  # no listener told us within the wait: announce
    LINK_UP = "link-up"  # a cable came back: wait for a listener again, then announce
    TICKLE = "tickle"  # SIGHUP: announce now
    LEAVE = "leave"  # graceful stop


S, T = State, Trigger
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.AWAITING, T.LISTENER_HEARD): S.BEATING,
    (S.AWAITING, T.ANNOUNCE_DUE): S.BEATING,
    (S.AWAITING, T.LINK_UP): S.AWAITING,  # the wait starts over, for the cable's reason
    (S.AWAITING, T.TICKLE): S.AWAITING,
    (S.AWAITING, T.LEAVE): S.LEFT,
    (S.BEATING, T.LINK_UP): S.AWAITING,
    (S.BEATING, T.TICKLE): S.BEATING,
    (S.BEATING, T.LEAVE): S.LEFT,
    (S.LEFT, T.LINK_UP): S.LEFT,  # a carrier event races the stop: nothing to announce
}
del S, T
