"""Fuzz inputs for the heartbeat protocol's cores, made from captured datagrams.

:class:`Raw` is a datagram's fields, any of which may be invalid, signed again with the key by
:meth:`Raw.pack`; :class:`Mutator` makes random bytes, bit flips, truncations and extensions of
captured datagrams, and copies with one field changed and re-signed (or exact replays); a changed
flags field sets, clears or flips the cut-off and holding bits, or sets bits no type may carry.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from ipfailover.core import auth, wire

KEY = bytes(range(32))
_HEADER = struct.Struct("!4sBBBB8sQI")
POOL = 64  # captured datagrams kept per direction for mutation


@dataclass
class Raw:
    """A datagram's fields, any of which may be invalid; :meth:`pack` signs it with the key."""

    magic: bytes
    version: int
    mtype: int
    flags: int
    name: bytes
    name_len: int
    boot: bytes
    seq: int
    interval_us: int
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> Raw:
        magic, version, mtype, flags, name_len, boot, seq, iv = _HEADER.unpack_from(data)
        pos = _HEADER.size + name_len
        name = data[_HEADER.size : pos]
        body = data[pos : -auth.TAG_SIZE]
        return cls(magic, version, mtype, flags, name, name_len, boot, seq, iv, body)

    def pack(self, key: bytes = KEY) -> bytes:
        head = _HEADER.pack(
            self.magic,
            self.version & 0xFF,
            self.mtype & 0xFF,
            self.flags & 0xFF,
            self.name_len & 0xFF,
            self.boot,
            self.seq % 2**64,
            self.interval_us % 2**32,
        )
        data = head + self.name + self.body
        return data + auth.sign(key, data)


class Mutator:
    """Makes fuzz inputs from a pool of captured datagrams."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.boots: list[bytes] = []  # boot ids seen, for plausible boot changes
        self.nonces: list[bytes] = []  # nonces and echoes seen on the wire

    def note(self, data: bytes) -> None:
        try:
            msg = wire.decode(data, KEY)
        except wire.RemoteProtocolError:
            return
        for value, bag in ((msg.boot_id, self.boots), (msg.nonce, self.nonces)):
            if value and value not in bag:
                bag.append(value)
                del bag[:-16]
        for e in msg.echoes:
            if e not in self.nonces:
                self.nonces.append(e)
                del self.nonces[:-16]

    def random_bytes(self) -> bytes:
        r = self.rng
        n = r.choice((0, 1, 4, 27, 60, r.randrange(0, 80), r.randrange(80, 600)))
        data = r.randbytes(n)
        if r.random() < 0.5 and n >= 6:
            data = wire.MAGIC + bytes([wire.VERSION]) + data[5:]
        return data

    def bit_flip(self, data: bytes) -> bytes:
        b = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 3, 8))):
            i = self.rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
        return bytes(b)

    def truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data))]

    def extend(self, data: bytes) -> bytes:
        return data + self.rng.randbytes(self.rng.choice((1, 8, 32, self.rng.randrange(1, 500))))

    def resign(self, data: bytes) -> bytes:
        """One field changed (or none: an exact re-signed replay), signed with the key."""
        r = self.rng
        raw = Raw.parse(data)
        which = r.choice(
            (
                "replay",
                "type",
                "flags",
                "flags",
                "name",
                "boot",
                "seq",
                "seq",
                "interval",
                "echoes",
                "nonce",
                "echo_boot",
                "echo_seq",
                "body",
                "version",
            )
        )
        if which == "type":
            raw.mtype = r.choice((0, 1, 2, 3, 4, 5, 6, 7, r.randrange(256)))
        elif which == "flags":
            # the cut-off and holding bits set, cleared or flipped, or bits no type may carry
            cut, hold = wire.FLAG_CUT_OFF, wire.FLAG_HOLDING
            flips = (raw.flags ^ cut, raw.flags ^ hold)
            raw.flags = r.choice((0, hold, cut, cut | hold, *flips, 0x80, 0xFF, r.randrange(256)))
        elif which == "name":
            raw.name = r.choice(
                (
                    b"primary",
                    b"secondary",
                    b"intruder",
                    b"",
                    b"a b",
                    b"\x00\x01",
                    b"\xff\xfe",
                    b"x" * 64,
                    b"x" * 65,
                    r.randbytes(r.randrange(1, 70)),
                )
            )
            raw.name_len = len(raw.name) if r.random() < 0.8 else r.randrange(256)
        elif which == "boot":
            raw.boot = r.choice(self.boots) if self.boots and r.random() < 0.5 else r.randbytes(8)
        elif which == "seq":
            raw.seq = r.choice(
                (
                    raw.seq,
                    raw.seq + 1,
                    raw.seq - 1,
                    raw.seq + r.randrange(1, 300),
                    raw.seq - r.randrange(1, 300),
                    raw.seq + 2**40,
                    0,
                    2**64 - 1,
                    r.randrange(2**64),
                )
            )
        elif which == "interval":
            raw.interval_us = r.choice((0, 1, 2**32 - 1, r.randrange(2**32)))
        elif which == "echoes":
            count = r.choice((0, 1, 3, 16, 17, 255))
            pool = self.nonces or [b"\0" * 8]
            echoes = b"".join(
                r.choice(pool) if r.random() < 0.5 else r.randbytes(8)
                for _ in range(min(count, 20))
            )
            raw.body = bytes([count]) + echoes
        elif which in ("nonce", "echo_boot", "echo_seq") and len(raw.body) == 24:
            nonce, echo_boot, echo_seq = raw.body[:8], raw.body[8:16], raw.body[16:]
            if which == "nonce":
                nonce = (
                    r.choice(self.nonces) if self.nonces and r.random() < 0.5 else r.randbytes(8)
                )
            elif which == "echo_boot":
                echo_boot = r.choice(self.boots) if self.boots else r.randbytes(8)
            else:
                (value,) = struct.unpack("!Q", echo_seq)
                value = r.choice((value + 1, value - 1, value + 1000, 0, r.randrange(2**64)))
                echo_seq = struct.pack("!Q", value % 2**64)
            raw.body = nonce + echo_boot + echo_seq
        elif which == "body":
            raw.body = r.choice(
                (b"", raw.body[:-1], raw.body + b"\0", r.randbytes(r.randrange(40)))
            )
        elif which == "version":
            raw.version = r.choice((0, 2, 255))
        return raw.pack()
