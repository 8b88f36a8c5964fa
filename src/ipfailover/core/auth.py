"""Message authentication: HMAC-SHA256 under a shared key (sans-I/O).

The key file's text is parsed here; reading it from disk and checking its mode is the shell's job
(:func:`ipfailover.shell.runtime.load_key`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass

from ipfailover.core.errors import KeyError_ as KeyError_

TAG_SIZE = 32
MIN_KEY_BYTES = 16


def parse_key_text(text: str) -> bytes:
    """Return the key encoded in a key file's text.

    The format is one line of hexadecimal digits (``ipfailover keygen`` writes 64, i.e. 256 bits);
    blank lines and lines starting with ``#`` are ignored. At least 128 bits are required.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    payload = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(payload) != 1:
        raise KeyError_("expected exactly one line of hexadecimal key material")
    try:
        key = bytes.fromhex(payload[0])
    except ValueError:
        raise KeyError_("key is not hexadecimal") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyError_(f"key is {len(key) * 8} bits; at least {MIN_KEY_BYTES * 8} are required")
    return key


def format_key(key: bytes) -> str:
    """The key file text for ``key`` (what ``ipfailover keygen`` writes)."""
    return key.hex() + "\n"


def sign(key: bytes, data: bytes) -> bytes:
    """The HMAC-SHA256 tag of ``data``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def verify(key: bytes, data: bytes, tag: bytes) -> bool:
    """Whether ``tag`` authenticates ``data``, compared in constant time."""
    return hmac.compare_digest(sign(key, data), tag)


class ReplayWindow:
    """Anti-replay for one sender boot: accept each sequence number once, tolerating reordering.

    Like IPsec's window (RFC 4303 §3.4.3): numbers more than ``size`` behind the highest seen are
    refused, as is any number already seen inside the window. Heartbeats of one boot share one
    counter across every network, so a datagram seen on one network cannot be replayed on another.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.highest = -1
        self._bits = 0  # bit i set: highest - i was seen

    def seen(self, seq: int) -> bool:
        """``seq`` would be refused (a replay, or too old); nothing is recorded."""
        offset = self.highest - seq
        return offset >= 0 and (offset >= self.size or bool(self._bits >> offset & 1))

    def accept(self, seq: int) -> bool:
        """Record ``seq``; False if it is a replay or too old."""
        if seq > self.highest:
            shift = seq - self.highest
            # A jump past the window forgets it all (and must not build a huge integer).
            kept = self._bits << shift if shift < self.size else 0
            self._bits = (kept | 1) & ((1 << self.size) - 1)
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= self.size or self._bits >> offset & 1:
            return False
        self._bits |= 1 << offset
        return True


class TokenBucket:
    """A token bucket on caller-supplied time: ``rate`` tokens a second, at most ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; False (and nothing spent) if not."""
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class Identity:
    """Which datagrams that carry our node name are ours: those of a *local* boot id.

    A name can be shared (cloned machines keep their host name); a boot id is drawn at random by
    each daemon at start-up, so it cannot. The shell tells us the boot ids of the daemons on this
    host (:meth:`set_local`, from their boot files in FAILOVER_RUN_DIR). A datagram with our name
    and a boot id we do not know is *asked* about: the core holds it and the shell re-reads the
    boot files; a boot id still unknown after that is *foreign*, another machine using our name.
    Asking is rate-limited, and memory is bounded; while the budget is spent such a datagram is
    neither ours nor foreign (*undecided*) and is dropped, which only delays the decision.
    """

    OWN = "own"
    FOREIGN = "foreign"
    ASK = "ask"
    UNDECIDED = "undecided"
    OTHER = "other"  # not our name

    MAX_FOREIGN = 16
    MAX_ASKED = 8

    def __init__(self, node: str, boot: bytes, now: float) -> None:
        self.node = node
        self.boot = boot
        self.local: frozenset[bytes] = frozenset({boot})
        self.foreign: OrderedDict[bytes, None] = OrderedDict()
        self.asked: OrderedDict[bytes, None] = OrderedDict()
        self._budget = TokenBucket(rate=2.0, burst=8.0, now=now)

    def classify(self, sender: str, boot: bytes, now: float) -> str:
        if sender != self.node:
            return self.OTHER
        if boot in self.local:
            return self.OWN
        if boot in self.foreign:
            self.foreign.move_to_end(boot)
            return self.FOREIGN
        if boot in self.asked:
            return self.ASK
        if len(self.asked) < self.MAX_ASKED and self._budget.take(now):
            self.asked[boot] = None
            return self.ASK
        return self.UNDECIDED

    def set_local(self, boots: frozenset[bytes]) -> list[bytes]:
        """The shell's answer; returns the boot ids asked about that turned out foreign."""
        self.local = frozenset(boots) | {self.boot}
        found = [b for b in self.asked if b not in self.local]
        for b in found:
            self.foreign[b] = None
            if len(self.foreign) > self.MAX_FOREIGN:
                self.foreign.popitem(last=False)
        self.asked.clear()
        return found

    @property
    def wants_local(self) -> bool:
        return bool(self.asked)


COLLISION_QUIET = 600.0  # seconds without a colliding datagram that end an episode


@dataclass(frozen=True, kw_only=True)
class NameCollision:
    """Another machine sends authentic, fresh datagrams under our node name (a cloned host name,
    or a copied FAILOVER_NODE_NAME). Once per episode; :class:`Collision` keeps the details."""

    name: str
    boot: bytes
    addr: tuple[str, int]
    network: str
    at: float


@dataclass
class Collision:
    """The current (or last) episode of a node-name collision, for status and metrics."""

    name: str
    boot: bytes
    addr: tuple[str, int]
    network: str
    first: float
    last: float
    count: int = 1
    episodes: int = 1

    def note(self, boot: bytes, addr: tuple[str, int], network: str, now: float) -> bool:
        """Another colliding datagram; True if it starts a new episode."""
        new = now - self.last > COLLISION_QUIET
        if new:
            self.first, self.episodes = now, self.episodes + 1
        self.boot, self.addr, self.network, self.last = boot, addr, network, now
        self.count += 1
        return new


def note_collision(
    current: Collision | None,
    name: str,
    boot: bytes,
    addr: tuple[str, int],
    network: str,
    now: float,
) -> tuple[Collision, NameCollision | None]:
    """Record a colliding datagram; the event to emit if it starts an episode."""
    event = NameCollision(name=name, boot=boot, addr=addr, network=network, at=now)
    if current is None:
        return Collision(name, boot, addr, network, now, now), event
    return current, event if current.note(boot, addr, network, now) else None
