"""The core's exception types, in one place.

Two families, as in h11: a *remote* error is the peer's (or the wire's) fault and only ever
drops a datagram; a *local* error is ours (a bug in the caller, a bad key or configuration) and
says what to fix. The modules that raise them re-export them under their old names
(``wire.RemoteProtocolError``, ``monitor.LocalProtocolError``, ``auth.KeyError_``,
``config.ConfigError``), so callers need not know this module.
"""

from __future__ import annotations

import enum

# --------------------------------------------------------------------------- remote: dropped


class Reason(enum.Enum):
    """Why a datagram was dropped. The values are the stable names used in logs and status."""

    MALFORMED = "malformed"
    BAD_AUTH = "bad-auth"
    REPLAY = "replay"  # a sequence number seen before (or far too old) for that sender boot
    STALE = "stale"  # authentic, but echoes no fresh challenge of ours: an old capture, or a
    #                  primary that has not yet heard our challenge (normal for its first heartbeat)
    UNKNOWN_PEER = "unknown-peer"
    UNEXPECTED = "unexpected"


class RemoteProtocolError(Exception):
    """The peer (or someone on the wire) sent something we must drop."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- local: our bug


class LocalProtocolError(ValueError, RuntimeError):
    """We used the protocol wrongly: a bug in the caller, never the peer's fault.

    Raised when the caller builds a message that cannot be encoded (:mod:`wire`) and when a
    shell feeds a state machine an event its state has no transition for (:mod:`monitor`).
    It is both a ValueError (what the wire's used to be) and a RuntimeError (what the
    monitor's used to be), so every ``except`` clause that caught one still does. Such a clause
    now also catches the other kind of misuse (an ``except ValueError`` catches an illegal
    monitor transition); no clause in the package wraps both, and a bug should not be caught.
    """


# --------------------------------------------------------------------------- local: settings


class KeyError_(ValueError):
    """The key text is not a usable key (a local problem: say what to fix)."""


class ConfigError(Exception):
    """One configuration problem, located by file, line and variable.

    ``line`` is 0 for problems that belong to no line (an unreadable file, a
    variable a role needs but nobody set); those print as ``path: message``.
    """

    def __init__(self, path: str, line: int, variable: str, message: str) -> None:
        super().__init__(path, line, variable, message)
        self.path = path
        self.line = line
        self.variable = variable
        self.message = message

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.variable}: {self.message}"


class ConfigErrors(Exception):
    """All problems found in one configuration; ``str()`` gives one line per problem."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)
