"""Loops compiled with numba (a core dependency) once per process; plain Python where it is missing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_COMPILED: dict[Callable, Callable | None] = {}


def one_integer_type(array: np.ndarray) -> np.ndarray:
    """``array`` with uint8 widened to uint16 (exact): the kernels then compile once for both.

    Each dtype a kernel sees is another compilation (seconds each, in every fresh process).
    """
    return array.astype(np.uint16) if array.dtype == np.uint8 else array


def padded(arrays: tuple, length: int) -> tuple:
    """``arrays`` (one type, at least one) padded to ``length`` with fillers of their type and layout.

    A tuple's length is part of its compiled type: padded, a kernel taking a variable number of
    arrays compiles once. The kernel is told how many are real; the fillers are never read.
    """
    first = arrays[0]
    # an empty array is C-contiguous; a one-column cut of a 2 x 2 array is not (numba's layout 'A')
    filler = np.zeros((0,) * first.ndim, first.dtype) if first.flags.c_contiguous else np.zeros((2, 2), first.dtype)[:, :1]
    return tuple(arrays) + (filler,) * (length - len(arrays))


def compiled(loops: Callable) -> Callable | None:
    """``loops`` compiled with numba (cached on disk, GIL released), or None without numba."""
    if loops not in _COMPILED:
        try:
            import numba
        except ImportError:
            _COMPILED[loops] = None
        else:
            _COMPILED[loops] = numba.njit(cache=True, nogil=True)(loops)
    return _COMPILED[loops]


def compiled_or_python(loops: Callable) -> Callable:
    """``loops`` compiled, or the same function run (slowly) as Python."""
    return compiled(loops) or loops
