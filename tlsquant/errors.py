"""Exceptions raised by tlsquant.

Every error subclasses :class:`TLSQuantError` and the matching built-in, so
callers can catch either. Messages name the file or parameter, what was
expected and what was found.
"""

from __future__ import annotations


class TLSQuantError(Exception):
    """Base class of all tlsquant errors."""


class SlideNotFoundError(TLSQuantError, FileNotFoundError):
    """A slide path does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would format errno/filename instead
        return str(self.args[0]) if self.args else ""


class SlideFormatError(TLSQuantError, ValueError):
    """A file exists but is not a slide tlsquant can read, or its layout is inconsistent."""


class PixelSizeError(TLSQuantError, ValueError):
    """The physical pixel size is missing, not physical, or implausible."""


class ChannelError(TLSQuantError, KeyError):
    """A channel name is unknown, duplicated, or the names do not fit the file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(TLSQuantError, ValueError):
    """A configuration file or override is invalid."""


class CorruptSlideError(SlideFormatError):
    """A slide file is truncated or corrupt (a page, tile or chunk cannot be read)."""


class OutputError(TLSQuantError, OSError):
    """An output cannot be written: full disk, read-only or unwritable place, a file where a folder should be."""

    def __str__(self) -> str:  # OSError would format errno/filename instead
        return str(self.args[0]) if self.args else ""


class OutputLockedError(OutputError):
    """Another tlsquant run is writing to the same output folder."""


class StaleResultError(TLSQuantError, ValueError):
    """Existing outputs were made with another config, input file or tlsquant version."""


class SlideTooLargeError(TLSQuantError, ValueError):
    """A slide's declared size needs more memory than the analysis is allowed."""
