"""Fixtures shared by every test.

``trusted_dir`` is a scratch folder that passes the hook security rules (no group/other
write bit on it or any parent): pytest's own ``tmp_path`` lives under the world-writable
``/tmp``, which the rules rightly refuse for anything that runs as root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0


def _trusted_base() -> Path:
    base = Path("/run/cleancut-tests") if IS_ROOT else Path.home() / ".cache" / "cleancut-tests"
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    base.chmod(0o755)
    return base


@pytest.fixture
def trusted_dir() -> Iterator[Path]:
    """A fresh folder whose whole path is writable by its owner only."""
    path = Path(tempfile.mkdtemp(dir=_trusted_base()))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(reason="needs root (loop devices, mounts, fsfreeze)")
    skip_restic = pytest.mark.skip(reason="needs restic on PATH (make setup installs it)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)
        if "restic" in item.keywords and shutil.which("restic") is None:
            item.add_marker(skip_restic)
