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
