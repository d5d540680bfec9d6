"""The multi-host testbed (DESIGN.md §8): "VM" hosts as network namespaces with sshd.

``Testbed(root, ["h1", "h2"]).up()`` gives each host a namespace, a veth pair with
addresses from 198.18.0.0/15 and an sshd whose only authorised key runs the guest agent;
``python -m cleancut.testbed up N`` (``scripts/testbed``) does the same for a person.
"""

from cleancut.testbed.bed import DelayResult, Host, Testbed, created_here
from cleancut.testbed.netns import TestbedError
from cleancut.testbed.sshd import authorized_line
from cleancut.testbed.state import BASE, list_roots, read_state, teardown, teardown_all

__all__ = [
    "BASE",
    "DelayResult",
    "Host",
    "Testbed",
    "TestbedError",
    "authorized_line",
    "created_here",
    "list_roots",
    "read_state",
    "teardown",
    "teardown_all",
]
