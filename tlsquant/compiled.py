"""Loops compiled with numba (a core dependency) once per process; plain Python where it is missing."""

from __future__ import annotations

from collections.abc import Callable

_COMPILED: dict[Callable, Callable | None] = {}


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
