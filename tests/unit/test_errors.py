"""The core's exception types live in one module and are the same classes under their old names."""

from __future__ import annotations

import pytest

from ipfailover.core import auth, config, errors, monitor, wire


def test_one_local_protocol_error_for_the_wire_and_the_monitor() -> None:
    assert wire.LocalProtocolError is monitor.LocalProtocolError is errors.LocalProtocolError
    # both old bases kept, so every caller's except clause that caught one still does
    assert issubclass(errors.LocalProtocolError, ValueError)
    assert issubclass(errors.LocalProtocolError, RuntimeError)


def test_the_old_names_are_the_errors_modules_classes() -> None:
    assert wire.RemoteProtocolError is errors.RemoteProtocolError
    assert wire.Reason is errors.Reason
    assert auth.KeyError_ is errors.KeyError_
    assert config.ConfigError is errors.ConfigError
    assert config.ConfigErrors is errors.ConfigErrors


def test_a_bad_message_raises_the_shared_error() -> None:
    with pytest.raises(errors.LocalProtocolError):
        wire.Message(
            type=wire.MsgType.HEARTBEAT, sender="", boot_id=bytes(8), seq=1, interval=1.0
        )
