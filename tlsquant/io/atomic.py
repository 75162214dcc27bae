"""Write files under a temporary name and rename when complete.

A killed run never leaves a half-written file that looks finished, and the next run
(which holds the folder's lock, see :mod:`tlsquant.io.lock`) removes what a killed run
left behind. Any failure to write (full disk, quota, read-only place, permissions) is an
:class:`~tlsquant.errors.OutputError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError, TLSQuantError

PARTIAL_MARK = ".partial-"
# what the user can do about each errno
_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}
# the whole output place is unusable: a batch stops instead of failing slide after slide
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def output_error(path: str | Path, exc: OSError, action: str = "cannot write") -> OutputError:
    """An :class:`OutputError` for ``exc`` raised while writing ``path``, with advice."""
    advice = _ADVICE.get(exc.errno, exc.strerror or str(exc))
    error = OutputError(f"{path}: {action}: {advice} ({exc.strerror or exc})")
    error.reason_errno = exc.errno  # an attribute in __dict__ survives pickling to the batch's client
    return error


def partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}")


def is_partial(path: Path) -> bool:
    return path.name.startswith(".") and PARTIAL_MARK in path.name


def remove_partials(directory: str | Path) -> list[Path]:
    """Delete the temporaries a killed run left in ``directory`` (call it holding the folder's lock)."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for leftover in directory.iterdir():
        if is_partial(leftover):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    An ``OSError`` while writing or renaming becomes an :class:`OutputError` naming ``path``;
    the temporary is removed either way.
    """
    path = Path(path)
    temporary = partial_name(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield temporary
            if path.is_dir() and temporary.is_dir():
                shutil.rmtree(path)
            os.replace(temporary, path)
        except TLSQuantError:  # a slide that cannot be read while drawing is not an output problem
            raise
        except OSError as exc:
            raise output_error(path, exc) from exc
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            with contextlib.suppress(OSError):
                temporary.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def check_output_dir(path: str | Path, *, option: str = "-o") -> Path:
    """Make sure ``path`` is (or can become) a folder tlsquant can write to, before any work.

    Raises :class:`OutputError` when it is a file, lies inside a file, or cannot be written
    (read-only, permissions, full disk).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, expected a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{option} {path}: a part of the path is a file, expected folders") from None
    except OSError as exc:
        raise output_error(path, exc, f"{option} cannot be created") from exc
    probe = path / f".write-test{PARTIAL_MARK}{os.getpid()}"
    try:
        probe.write_bytes(b"tlsquant")
    except OSError as exc:
        raise output_error(path, exc, f"{option} is not writable") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path
