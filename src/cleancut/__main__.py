"""``python -m cleancut``: the same as the ``cleancut`` command."""

from cleancut.cli.main import main

main()
