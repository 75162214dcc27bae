"""One writer per output folder: an advisory lock file held for the whole run.

Two runs started on the same folder would interleave their files; the second one is
refused with a message naming the first (or waits for it with ``wait=True``). The lock
is an ``fcntl`` lock, so it dies with its process: a killed run never leaves a folder
locked. Where ``fcntl`` is missing (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputLockedError
from .atomic import output_error

LOCK_NAME = ".tlsquant.lock"


@contextlib.contextmanager
def output_lock(directory: str | Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold ``directory``'s lock for the block; another holder raises :class:`OutputLockedError`."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(directory)
        return
    directory = Path(directory)
    path = directory / LOCK_NAME
    while True:
        handle = _open_lock_file(path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            break  # held: described below
        # the holder before us removes the file when it is done: lock the file that is there now
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current and not handle.writable():
            # a lock file left by another user's killed run, ours to lock but not to write: replace it
            try:
                path.unlink()
                current = False
            except OSError:
                pass  # not ours to remove either (a sticky folder): hold the lock on it as it is
        if current:
            break
        handle.close()
    held = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            try:
                who = json.loads(holder)
                described = f"pid {who['pid']} on {who['host']}, started {who['started']}: {who['command']}"
            except (ValueError, KeyError, TypeError):
                described = "another process"
            raise OutputLockedError(
                f"{directory}: another tlsquant run is writing here ({described}); wait for it to finish "
                f"or choose another output folder") from None
        if handle.writable():
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": " ".join(sys.argv)[:300]}))
            handle.flush()
        held = True
        yield directory
    finally:
        if held:
            with contextlib.suppress(OSError):
                path.unlink()  # while still holding it: the next run creates a fresh file
        handle.close()  # closing releases the lock


def _open_lock_file(path: Path):
    """The lock file, opened to write, or only to read when it is there but not ours to write.

    A lock file left by another user's killed run may not be writable by us although the
    folder is; reading is enough to lock it, and to read who holds it.
    """
    try:
        return open(path, "a+", encoding="utf-8")
    except PermissionError as exc:
        try:
            return open(path, encoding="utf-8")
        except OSError:
            raise output_error(path, exc, "cannot create the lock file") from exc
    except OSError as exc:
        raise output_error(path, exc, "cannot create the lock file") from exc
