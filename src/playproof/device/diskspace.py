"""The journal's data folder and the space around it: created, checked, kept in reserve.

A full disk must not stop a screen from recording: the journal evicts its oldest
records while there is still room for the eviction itself to be written
(`disk_low`), and a small reserve file beside it is given back when the disk fills
anyway, so that the first eviction has room to run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from playproof.device.journalfile import WAL_PAGES
from playproof.errors import JournalError

RESERVE_FILE: Final = "journal.reserve"
RESERVE_BYTES: Final = 512 * 1024
# Free space below which the journal evicts oldest first before writing: twice
# the WAL's size (a checkpoint may have to grow the main file by as much) and
# some room for the eviction's own pages.
HEADROOM_BYTES: Final = 2 * WAL_PAGES * 4096 + 256 * 1024


def prepare_folder(data_dir: Path) -> Path:
    """The data folder, created if missing; JournalError when it cannot be written."""
    if data_dir.exists() and not data_dir.is_dir():
        raise JournalError(f"data folder {data_dir} exists but is not a folder")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create data folder {data_dir}: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise JournalError(f"data folder {data_dir} is not writable by this user")
    return data_dir


def disk_low(data_dir: Path) -> bool:
    """Whether the filesystem under the journal has less free space than the headroom."""
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < HEADROOM_BYTES


def hold_reserve(data_dir: Path) -> None:
    """Keep a reserve file of RESERVE_BYTES beside the journal, when there is room for it.

    Freed when the disk fills, it gives the first eviction room to run; it is
    taken back once deliveries have freed space again.
    """
    reserve = data_dir / RESERVE_FILE
    if reserve.exists():
        return
    try:
        fd = os.open(reserve, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        reserve.unlink(missing_ok=True)


def release_reserve(data_dir: Path) -> None:
    """Give the reserve's space back to the filesystem."""
    with contextlib.suppress(OSError):
        (data_dir / RESERVE_FILE).unlink()
