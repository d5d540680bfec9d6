"""Every reply is checked on arrival, by its operation's model: a figure the coordinator
would put in a manifest must be a finite number where a number belongs."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cleancut.errors import ProtocolError
from cleancut.protocol import OPERATIONS
from cleancut.protocol.replies import REPLIES, check_reply

THAW: dict[str, Any] = {
    "thaw_started_at": 1.0,
    "thawed_at": 1.1,
    "hold_ended_at": 1.2,
    "thaw_errors": [],
    "self_thawed": None,
    "self_thawed_at": None,
    "write_stall": 0.07,
    "pause": 0.3,
    "thawed_from_outside": [],
    "writers": {},
    "hooks": [],
}


def test_every_operation_has_a_reply_model() -> None:
    assert set(REPLIES) == set(OPERATIONS)


def test_a_good_reply_comes_back_as_it_was() -> None:
    assert check_reply("vm1", "thaw", dict(THAW)) == THAW


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("write_stall", math.inf),
        ("write_stall", -1.0),
        ("pause", math.nan),
        ("thawed_at", "soon"),
        ("thaw_errors", "none"),
    ],
)
def test_a_bad_figure_is_a_protocol_error_naming_host_operation_and_field(
    field: str, value: Any
) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_reply("vm1", "thaw", {**THAW, field: value})
    message = caught.value.message
    assert message.startswith("host vm1: invalid thaw reply: ") and field in message
    assert str(value) not in message.split(": ", 2)[2].replace(field, "")


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(ProtocolError, match="surprise"):
        check_reply("vm1", "clock", {"time": 1.0, "surprise": 1})


def test_a_missing_field_is_refused() -> None:
    with pytest.raises(ProtocolError, match="frozen_at"):
        check_reply(
            "vm2",
            "freeze",
            {"hold_started_at": 1.0, "mounts": [], "freeze_error": None, "writers": {}},
        )
