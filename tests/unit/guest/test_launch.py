"""How the kernel's #! rule and env(1) are read: which program a command really runs."""

from __future__ import annotations

import pytest

from cleancut.guest.launch import DEFAULT_PATH, EnvCall, parse_env, shebang


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"#!/bin/sh\necho", ["/bin/sh"]),
        (b"#! /usr/bin/python3 -u -x\n", ["/usr/bin/python3", "-u -x"]),  # one argument
        (b"#!/usr/bin/env  bash \r\n", ["/usr/bin/env", "bash"]),
        (b"#!\n", None),
        (b"\x7fELF", None),
        (b"echo hi\n", None),
    ],
)
def test_shebang_is_split_as_linux_splits_it(head: bytes, expected: list[str] | None) -> None:
    assert shebang(head) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sh", "x"], EnvCall("sh", ["x"], None, "/p")),
        (["-i", "A=1", "sh"], EnvCall("sh", [], None, DEFAULT_PATH)),
        (["PATH=/evil", "sh"], EnvCall("sh", [], None, "/evil")),
        (["-u", "PATH", "sh"], EnvCall("sh", [], None, DEFAULT_PATH)),
        (["-uHOME", "-C", "/d", "--", "sh"], EnvCall("sh", [], "/d", "/p")),
        (
            ["--chdir=/d", "--ignore-e", "x=1", "prog", "-a"],
            EnvCall("prog", ["-a"], "/d", DEFAULT_PATH),
        ),
        (["-S", "sh -e '/a b'", "c"], EnvCall("sh", ["-e", "/a b", "c"], None, "/p")),
        (["-S/x/interp -x"], EnvCall("/x/interp", ["-x"], None, "/p")),
        (["-iv"], EnvCall(None, [], None, DEFAULT_PATH)),
        (["--version", "sh"], EnvCall(None, [], None, "/p")),
        (["-", "sh"], EnvCall("sh", [], None, DEFAULT_PATH)),
    ],
)
def test_env_is_read_as_gnu_env_reads_it(args: list[str], expected: EnvCall) -> None:
    assert parse_env(args, search_path="/p") == expected


@pytest.mark.parametrize(
    "args",
    [
        ["-X", "sh"],
        ["--nope", "sh"],
        ["--unset"],
        ["--ign", "sh"],
        ["-u"],
        ["-S", "${X}"],
        ["-S", "'open"],
    ],
)
def test_env_arguments_that_cannot_be_read_are_errors(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_env(args, search_path="/p")
