"""Message authentication: HMAC-SHA256 under a shared key (sans-I/O).

The key file's text is parsed here; reading it from disk and checking its mode is the shell's job
(:func:`ipfailover.daemon.load_key`).
"""

from __future__ import annotations

import hashlib
import hmac

TAG_SIZE = 32
MIN_KEY_BYTES = 16


class KeyError_(ValueError):
    """The key text is not a usable key (a local problem: say what to fix)."""


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
