"""The daemons' log: one ``key=value`` line per event (docs/status.md lists them), with repeated
drops rate-limited; the wall-clock view of the loop's times used by status and mail."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from ipfailover.core import auth, wire
from ipfailover.shell.clock import Clock

# Events ---------------------------------------------------------------------------------------


def _quote(value: object) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text or any(c in text for c in ' "=\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_event(event: str, **fields: object) -> str:
    """One log line of stable ``key=value`` fields, ``event`` first (journald/syslog friendly)."""
    parts = [f"event={event}"]
    parts += [f"{k.replace('_', '-')}={_quote(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


class EventLog:
    """Logs events as ``key=value`` lines; repeated drops are rate-limited per reason."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, window: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._drops: dict[str, tuple[float, int, int]] = {}  # reason -> (window start, n, hidden)

    def __call__(self, event: str, level: int = logging.INFO, **fields: object) -> None:
        self.logger.log(level, format_event(event, **fields))

    def dropped(self, d: wire.Dropped, now: float) -> None:
        start, shown, hidden = self._drops.get(d.reason.value, (now, 0, 0))
        if now - start >= self.window:
            if hidden:
                self("drops-suppressed", logging.WARNING, reason=d.reason.value, count=hidden)
            start, shown, hidden = now, 0, 0
        if self.logger.isEnabledFor(logging.DEBUG):  # --verbose: every decision, unthrottled
            shown = 0
        if shown < self.burst:
            level = logging.INFO if d.reason is wire.Reason.STALE else logging.WARNING
            self(
                "dropped",
                level,
                reason=d.reason.value,
                detail=d.detail,
                source=f"{d.addr[0]}:{d.addr[1]}",
                network=d.network or None,
            )
            shown += 1
        else:
            hidden += 1
        self._drops[d.reason.value] = (start, shown, hidden)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.Formatter.converter = time.gmtime


class WallClock:
    """Converts the loop's monotonic times into wall-clock seconds, for status and mail."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.offset = time.time() - loop.time()

    @classmethod
    def of(cls, clock: Clock) -> WallClock:
        """The same for a shell's clock (``clock.monotonic`` being the loop's time)."""
        wall = cls.__new__(cls)
        wall.offset = clock.time() - clock.monotonic()
        return wall

    def __call__(self, t: float | None) -> float | None:
        return None if t is None else t + self.offset


# Identity ----------------------------------------------------------------------------------------

COLLISION_FIX = (
    "another machine sends under this node name (a cloned host name?): give each machine its "
    "own FAILOVER_NODE_NAME"
)


def log_collision(events: EventLog, ev: auth.NameCollision) -> None:
    events(
        "node-name-collision",
        logging.ERROR,
        name=ev.name,
        source=f"{ev.addr[0]}:{ev.addr[1]}",
        boot=ev.boot.hex(),
        network=ev.network or None,
        fix=COLLISION_FIX,
    )
