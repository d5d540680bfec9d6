"""Moved to :mod:`cleancut.system.mounts` (kept while imports are updated)."""

from cleancut.system.mounts import *  # noqa: F403
from cleancut.system.mounts import MOUNTINFO, MountInfo, loop_backing_file, mount_of, read_mountinfo

__all__ = ["MOUNTINFO", "MountInfo", "loop_backing_file", "mount_of", "read_mountinfo"]
