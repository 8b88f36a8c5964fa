"""The wire format: one table of (message, bytes) cases drives encoder and decoder tests."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfailover.core import auth, wire
from ipfailover.core.wire import Message, MsgType, Reason, RemoteProtocolError

KEY = bytes(range(32))
BOOT = bytes.fromhex("0102030405060708")

CASES = [
    (
        Message(type=MsgType.HEARTBEAT, sender="a", boot_id=BOOT, seq=1, interval=1.0),
        "4950464f0101000101020304050607080000000000000001000f42406100",
    ),
    (
        Message(
            type=MsgType.LEAVING,
            sender="pri",
            boot_id=BOOT,
            seq=7,
            interval=0.01,
            echoes=(b"N" * 8, b"M" * 8),
        ),
        "4950464f"
        "01"
        "02"
        "00"
        "03"
        "0102030405060708"
        "0000000000000007"
        "00002710"
        "707269"
        "02" + (b"N" * 8 + b"M" * 8).hex(),
    ),
    (
        Message(
            type=MsgType.CHALLENGE,
            sender="s",
            boot_id=BOOT,
            seq=2,
            interval=0.5,
            nonce=b"x" * 8,
            echo_boot=b"P" * 8,
            echo_seq=7,
            holding=True,
        ),
        "4950464f01040101010203040506070800000000000000020007a12073"
        + (b"x" * 8 + b"P" * 8).hex()
        + "0000000000000007",
    ),
    (
        Message(
            type=MsgType.RELEASED,
            sender="s",
            boot_id=BOOT,
            seq=3,
            interval=1.0,
            nonce=b"r" * 8,
            echo_boot=b"B" * 8,
            echo_seq=99,
        ),
        "4950464f"
        "01"
        "03"
        "00"
        "01"
        "0102030405060708"
        "0000000000000003"
        "000f4240"
        "73" + (b"r" * 8 + b"B" * 8).hex() + "0000000000000063",
    ),
]


@pytest.mark.parametrize(("msg", "hexbody"), CASES)
def test_encode_matches_table(msg: Message, hexbody: str) -> None:
    body = bytes.fromhex(hexbody)
    assert wire.encode(msg, KEY) == body + auth.sign(KEY, body)


@pytest.mark.parametrize(("msg", "hexbody"), CASES)
def test_decode_matches_table(msg: Message, hexbody: str) -> None:
    body = bytes.fromhex(hexbody)
    assert wire.decode(body + auth.sign(KEY, body), KEY) == msg


@pytest.mark.parametrize(("msg", "_"), CASES)
def test_every_truncation_and_extension_is_dropped(msg: Message, _: str) -> None:
    data = wire.encode(msg, KEY)
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            wire.decode(data[:cut], KEY)
    with pytest.raises(RemoteProtocolError):
        wire.decode(data + b"\0", KEY)


@pytest.mark.parametrize(("msg", "_"), CASES)
def test_every_bit_flip_is_dropped(msg: Message, _: str) -> None:
    data = wire.encode(msg, KEY)
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[i] ^= bit
            with pytest.raises(RemoteProtocolError) as info:
                wire.decode(bytes(flipped), KEY)
            assert info.value.reason in (Reason.MALFORMED, Reason.BAD_AUTH)


def test_wrong_key_is_bad_auth() -> None:
    data = wire.encode(CASES[0][0], KEY)
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(data, b"k" * 32)
    assert info.value.reason is Reason.BAD_AUTH


def test_apple_bare_heartbeat_string_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(b"heartbeat", KEY)
    assert info.value.reason is Reason.MALFORMED


def test_oversize_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode(b"IPFO" + bytes(wire.MAX_SIZE), KEY)


def test_signed_garbage_body_is_malformed_not_a_crash() -> None:
    """Authentic but structurally wrong (a peer bug): dropped as malformed."""
    head = bytes.fromhex("4950464f01010001") + BOOT + bytes(8) + bytes.fromhex("000f4240")
    body = head + b"a" + b"\x05"  # claims 5 echoes, carries none
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(body + auth.sign(KEY, body), KEY)
    assert info.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sender": ""},
        {"sender": "x" * 65},
        {"sender": "a\nb"},
        {"sender": "a b"},
        {"sender": "caf\u00e9"},
        {"sender": "a;b"},
        {"sender": "$(id)"},
        {"boot_id": b"short"},
        {"seq": -1},
        {"interval": 0.0},
        {"echoes": (b"x",)},
        {"echoes": (b"x" * 8,) * 17},
    ],
)
def test_local_misuse_raises_local_error(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "type": MsgType.HEARTBEAT,
        "sender": "a",
        "boot_id": BOOT,
        "seq": 1,
        "interval": 1.0,
    }
    with pytest.raises(wire.LocalProtocolError):
        Message(**{**base, **kwargs})  # type: ignore[arg-type]


@given(st.binary(max_size=600))
def test_fuzz_either_parses_or_remote_error(data: bytes) -> None:
    """h11's invariant: any bytes either parse or raise RemoteProtocolError, never anything else."""
    with contextlib.suppress(RemoteProtocolError):
        wire.decode(data, KEY)


@given(st.binary(min_size=wire.MIN_SIZE - auth.TAG_SIZE, max_size=wire.MAX_SIZE - auth.TAG_SIZE))
def test_fuzz_signed_garbage_never_crashes(body: bytes) -> None:
    """Even garbage signed with the right key (a buggy peer) only raises RemoteProtocolError."""
    body = b"IPFO\x01" + body[5:]
    with contextlib.suppress(RemoteProtocolError):
        wire.decode(body + auth.sign(KEY, body), KEY)


@given(
    kind=st.sampled_from(list(MsgType)),
    sender=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    seq=st.integers(0, 2**64 - 1),
    interval_us=st.integers(1, 2**32 - 1),
    echoes=st.lists(st.binary(min_size=8, max_size=8), max_size=16),
    nonce=st.binary(min_size=8, max_size=8),
)
def test_roundtrip(
    kind: MsgType, sender: str, seq: int, interval_us: int, echoes: list[bytes], nonce: bytes
) -> None:
    extra: dict[str, object] = {}
    if kind in (MsgType.HEARTBEAT, MsgType.LEAVING):
        extra["echoes"] = tuple(echoes)
    else:
        extra.update(nonce=nonce, echo_boot=BOOT, echo_seq=seq)
    msg = Message(
        type=kind, sender=sender, boot_id=BOOT, seq=seq, interval=interval_us / 1e6, **extra
    )  # type: ignore[arg-type]
    assert wire.decode(wire.encode(msg, KEY), KEY) == msg


@pytest.mark.parametrize("name", [b"a\nb", b"a b", b"a;b", b"caf\xc3\xa9", b"$(id)", b"a/b"])
def test_signed_name_outside_the_alphabet_is_malformed(name: bytes) -> None:
    """Names reach scripts' environments and mail subjects: only [A-Za-z0-9._-] is accepted."""
    head = bytes.fromhex("4950464f010100") + bytes([len(name)]) + BOOT + bytes(8)
    body = head + bytes.fromhex("000f4240") + name + b"\x00"
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(body + auth.sign(KEY, body), KEY)
    assert info.value.reason is Reason.MALFORMED


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_replay_window_any_sequence_is_cheap_and_once_only(seqs: list[int]) -> None:
    w = auth.ReplayWindow()
    accepted = [s for s in seqs if w.accept(s)]
    assert len(accepted) == len(set(accepted))
    assert w._bits.bit_length() <= w.size


def test_replay_window() -> None:
    w = auth.ReplayWindow(size=8)
    assert w.accept(5) and w.accept(3) and w.accept(10)
    assert not w.accept(5) and not w.accept(10)
    assert not w.accept(2)  # 8 behind the highest
    assert w.accept(4) and not w.accept(4)


def test_key_text() -> None:
    key = bytes(range(32))
    assert auth.parse_key_text("# comment\n" + auth.format_key(key)) == key
    for bad in ("", "zz", "00" * 8, "00\n11"):
        with pytest.raises(auth.KeyError_):
            auth.parse_key_text(bad)
