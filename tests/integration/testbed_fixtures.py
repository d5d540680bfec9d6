"""pytest fixtures for the multi-host testbed (DESIGN.md §8 Hosts).

``testbed`` is a factory: ``bed = testbed(["h1", "h2"])`` brings up two hosts (network
namespaces with sshd) and takes them down after the test, also when it failed. A
session-wide finaliser takes down whatever testbed this process still has up (one a test
made without the factory, or one whose teardown was interrupted). Tests using them are
marked ``root``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from cleancut.testbed import Testbed, created_here

TestbedFactory = Callable[[list[str]], Testbed]


@pytest.fixture(scope="session", autouse=True)
def _testbeds_down_at_session_end() -> Iterator[None]:
    yield
    for bed in created_here():
        bed.down()


@pytest.fixture
def testbed() -> Iterator[TestbedFactory]:
    """A factory of testbeds (one per call, each on its own block); all down afterwards."""
    made: list[Testbed] = []

    def make(hosts: list[str]) -> Testbed:
        bed = Testbed(None, hosts)
        made.append(bed)
        return bed.up()

    try:
        yield make
    finally:
        for bed in reversed(made):
            bed.down()
