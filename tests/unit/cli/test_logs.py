"""--log-json, -v and -q: taken from anywhere on the line, each stderr line sorted."""

from __future__ import annotations

import io
import json

from cleancut.cli.logs import LogOptions, LogStream, split


def test_the_options_are_taken_out_wherever_they_stand() -> None:
    rest, options = split(["backup", "app.toml", "--log-json", "-vv", "--json"])
    assert rest == ["backup", "app.toml", "--json"]
    assert options.json_lines and options.verbosity == 2
    rest, options = split(["-q", "points", "app.toml", "--", "-q"])
    assert rest == ["points", "app.toml", "--", "-q"] and options.quiet


def test_json_lines_carry_the_level_and_quiet_drops_info() -> None:
    target = io.StringIO()
    stream = LogStream(target, LogOptions(json_lines=True))
    stream.write("  freeze    done in 12.0 ms\nwarning: post-script failed\n")
    stream.write("error: host vm1: ")
    stream.write("unreachable\n")
    records = [json.loads(line) for line in target.getvalue().splitlines()]
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert records[2]["message"] == "error: host vm1: unreachable"
    assert all(r["time"].endswith("Z") for r in records)
    quiet = io.StringIO()
    LogStream(quiet, LogOptions(verbosity=-1)).write("progress\nwarning: late\n")
    assert quiet.getvalue() == "warning: late\n"
