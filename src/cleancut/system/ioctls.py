"""The ioctl request numbers cleancut issues, from ``<linux/fs.h>``, defined once."""

from __future__ import annotations

#: ``_IOWR('X', 119, int)``: freeze a file system (flush, then block every write)
FIFREEZE = 0xC0045877
#: ``_IOWR('X', 120, int)``: thaw a frozen file system
FITHAW = 0xC0045878
#: ``_IOW(0x94, 9, int)``: share the source file's blocks copy-on-write (reflink)
FICLONE = 0x40049409
