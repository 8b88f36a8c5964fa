"""The wire format (sans-I/O): encode and decode authenticated datagrams.

Layout (all integers big-endian), documented in ``docs/protocol.md``::

    0   magic      4  b"IPFO"
    4   version    1  1
    5   type       1  MsgType
    6   flags      1  CHALLENGE: bit 0 = the sender holds the primary's addresses;
                      HEARTBEAT: bit 1 = the sender lost carrier on every heartbeat network,
                      and got it back within the last CUT_FLAG_BEATS intervals; bits 2-3 =
                      that cut's number, modulo 4 (zero without bit 1); else zero
    7   name_len   1  1..64
    8   boot_id    8  random per process start
    16  seq        8  per-sender counter, +1 for every datagram
    24  interval   4  sender's interval in microseconds
    28  name       name_len bytes, each one of [A-Za-z0-9._-]
    ..  body       by type (see below)
    ..  tag        32 HMAC-SHA256 over everything before it

Bodies: HEARTBEAT and LEAVING carry ``count:u8`` then ``count`` echoed nonces of 8 bytes (at most
16); CHALLENGE, RELEASED and HANDBACK carry an 8-byte nonce (the challenge, the release id or the
hand-back id), the echoed boot id of the primary (8) and a sequence number of the primary's that
the sender saw (u64), so that the primary can refuse a replayed one. ANNOUNCED (the primary's
answer to a HANDBACK) has the same body, pointing the other way: the hand-back id, the listener's
boot id and the HANDBACK's sequence number.

The one public entry point, :func:`decode`, either returns a :class:`Message` or raises
:class:`RemoteProtocolError` with a ``reason`` used for counting. Any other exception is a bug.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

from ipfailover.core import auth
from ipfailover.core.errors import LocalProtocolError as LocalProtocolError
from ipfailover.core.errors import Reason as Reason
from ipfailover.core.errors import RemoteProtocolError as RemoteProtocolError

MAGIC = b"IPFO"
VERSION = 1
MAX_SIZE = 512
NONCE_SIZE = 8
BOOT_ID_SIZE = 8
MAX_NAME = 64
MAX_ECHOES = 16
#: Names go into log lines, scripts' environments and mail subjects: a safe alphabet only.
NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME}}}")
NAME_CHARS = "A-Z a-z 0-9 . _ -"
_HEADER = struct.Struct("!4sBBBB8sQI")
MIN_SIZE = _HEADER.size + 1 + auth.TAG_SIZE


class MsgType(enum.IntEnum):
    HEARTBEAT = 1
    LEAVING = 2
    RELEASED = 3
    CHALLENGE = 4
    HANDBACK = 5  # failoverd -> heartbeatd: announce your addresses now, then confirm
    ANNOUNCED = 6  # heartbeatd -> failoverd: announced, as asked by that HANDBACK


#: Types whose body is (nonce or id, echoed boot id, echoed sequence number).
ECHO_TYPES = frozenset({MsgType.RELEASED, MsgType.CHALLENGE, MsgType.HANDBACK, MsgType.ANNOUNCED})


FLAG_HOLDING = 0x01  # CHALLENGE
FLAG_CUT_OFF = 0x02  # HEARTBEAT
CUT_SHIFT = 2  # HEARTBEAT: the cut's number, modulo CUT_NUMBERS, in bits 2-3 (with FLAG_CUT_OFF)
CUT_NUMBERS = 4
#: Heartbeat rounds after a cut's end that carry FLAG_CUT_OFF (the first echoes a stale nonce and
#: proves nothing; the others against loss); a listener treats those of one cut as one report.
CUT_FLAG_BEATS = 4


#: The flags each type may carry; any other bit set is malformed.
_FLAGS = {
    MsgType.CHALLENGE: FLAG_HOLDING,
    MsgType.HEARTBEAT: FLAG_CUT_OFF | (CUT_NUMBERS - 1) << CUT_SHIFT,
}

Addr = tuple[str, int]


@dataclass(frozen=True, kw_only=True)
class Dropped:
    """A datagram that was dropped, for the shell to count and log at a rate limit."""

    reason: Reason
    detail: str
    addr: Addr
    network: str
    at: float


@dataclass(frozen=True, kw_only=True)
class Message:
    type: MsgType
    sender: str
    boot_id: bytes
    seq: int
    interval: float
    echoes: tuple[bytes, ...] = ()
    nonce: bytes = b""
    echo_boot: bytes = b""
    echo_seq: int = 0
    holding: bool = False  # CHALLENGE only: the sender holds the primary's addresses
    cut_off: bool = False  # HEARTBEAT only: the sender was just cut off on every network
    cut: int = 0  # with cut_off: that cut's number, modulo CUT_NUMBERS (one cut's from the next's)

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.sender):
            raise LocalProtocolError(f"sender name must be 1..{MAX_NAME} of {NAME_CHARS}")
        if len(self.boot_id) != BOOT_ID_SIZE:
            raise LocalProtocolError(f"boot id must be {BOOT_ID_SIZE} bytes")
        if not 0 <= self.seq < 2**64:
            raise LocalProtocolError("seq must fit in 64 bits")
        if not 0 < self.interval * 1e6 < 2**32:
            raise LocalProtocolError("interval must be positive and under 4294 s")
        if len(self.echoes) > MAX_ECHOES or any(len(e) != NONCE_SIZE for e in self.echoes):
            raise LocalProtocolError(f"at most {MAX_ECHOES} echoes of {NONCE_SIZE} bytes")
        if self.type in ECHO_TYPES and len(self.nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"{self.type.name} needs a {NONCE_SIZE}-byte nonce")
        if self.type in ECHO_TYPES and len(self.echo_boot) != 8:
            raise LocalProtocolError(f"{self.type.name} needs the echoed boot id")
        if self.holding and self.type is not MsgType.CHALLENGE:
            raise LocalProtocolError("only a CHALLENGE carries the holding flag")
        if self.cut_off and self.type is not MsgType.HEARTBEAT:
            raise LocalProtocolError("only a HEARTBEAT carries the cut-off flag")
        if not 0 <= self.cut < CUT_NUMBERS or (self.cut and not self.cut_off):
            raise LocalProtocolError(f"a cut number is 0..{CUT_NUMBERS - 1}, with the cut-off flag")


def encode(msg: Message, key: bytes) -> bytes:
    """Serialize and sign ``msg``."""
    name = msg.sender.encode("utf-8")
    flags = (FLAG_HOLDING if msg.holding else 0) | (FLAG_CUT_OFF if msg.cut_off else 0)
    flags |= msg.cut << CUT_SHIFT
    head = _HEADER.pack(
        MAGIC, VERSION, msg.type, flags, len(name), msg.boot_id, msg.seq, round(msg.interval * 1e6)
    )
    if msg.type in (MsgType.HEARTBEAT, MsgType.LEAVING):
        body = bytes([len(msg.echoes)]) + b"".join(msg.echoes)
    else:
        body = msg.nonce + msg.echo_boot + struct.pack("!Q", msg.echo_seq)
    data = head + name + body
    return data + auth.sign(key, data)


def decode(data: bytes, key: bytes) -> Message:
    """Verify and parse one datagram; raise :class:`RemoteProtocolError` if it must be dropped."""
    if not MIN_SIZE <= len(data) <= MAX_SIZE:
        raise RemoteProtocolError(Reason.MALFORMED, f"size {len(data)}")
    magic, version, mtype, flags, name_len, boot_id, seq, interval_us = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RemoteProtocolError(Reason.MALFORMED, "bad magic")
    if version != VERSION:
        raise RemoteProtocolError(Reason.MALFORMED, f"unsupported version {version}")
    signed, tag = data[: -auth.TAG_SIZE], data[-auth.TAG_SIZE :]
    if not auth.verify(key, signed, tag):
        raise RemoteProtocolError(Reason.BAD_AUTH, "tag does not verify")
    # Authenticated from here on; a structural error now means a peer bug, still only dropped.
    try:
        kind = MsgType(mtype)
    except ValueError:
        raise RemoteProtocolError(Reason.MALFORMED, f"unknown type {mtype}") from None
    allowed = _FLAGS.get(kind, 0)
    cut = flags >> CUT_SHIFT & (CUT_NUMBERS - 1) if kind is MsgType.HEARTBEAT else 0
    if flags & ~allowed or (cut and not flags & FLAG_CUT_OFF):
        raise RemoteProtocolError(Reason.MALFORMED, "bad header field")
    if not 1 <= name_len <= MAX_NAME or interval_us == 0:
        raise RemoteProtocolError(Reason.MALFORMED, "bad header field")
    pos = _HEADER.size + name_len
    sender = signed[_HEADER.size : pos].decode("ascii", "replace")
    if not NAME.fullmatch(sender):
        # names reach log lines, sd_notify, scripts' environment and mail subjects
        raise RemoteProtocolError(Reason.MALFORMED, f"sender name outside {NAME_CHARS}")
    body = signed[pos:]
    echoes, nonce, echo_boot, echo_seq = _decode_body(kind, body)
    return Message(
        type=kind,
        sender=sender,
        boot_id=boot_id,
        seq=seq,
        interval=interval_us / 1e6,
        echoes=echoes,
        nonce=nonce,
        echo_boot=echo_boot,
        echo_seq=echo_seq,
        holding=bool(flags & FLAG_HOLDING),
        cut_off=bool(flags & FLAG_CUT_OFF),
        cut=cut,
    )


def _decode_body(kind: MsgType, body: bytes) -> tuple[tuple[bytes, ...], bytes, bytes, int]:
    """(echoes, nonce, echo_boot, echo_seq) of a body; raise if its length does not fit its type."""
    if kind in (MsgType.HEARTBEAT, MsgType.LEAVING):
        if not body or body[0] > MAX_ECHOES or len(body) != 1 + body[0] * NONCE_SIZE:
            raise RemoteProtocolError(Reason.MALFORMED, "bad echo list")
        echoes = tuple(body[1 + i * NONCE_SIZE : 1 + (i + 1) * NONCE_SIZE] for i in range(body[0]))
        return echoes, b"", b"", 0
    if len(body) != NONCE_SIZE + BOOT_ID_SIZE + 8:
        raise RemoteProtocolError(Reason.MALFORMED, f"bad {kind.name.lower()} body")
    (echo_seq,) = struct.unpack_from("!Q", body, NONCE_SIZE + BOOT_ID_SIZE)
    return (), body[:NONCE_SIZE], body[NONCE_SIZE : NONCE_SIZE + BOOT_ID_SIZE], echo_seq
