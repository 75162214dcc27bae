"""tlsquant: quantify tertiary lymphoid structures in multiplex immunofluorescence slides."""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ChannelError,
    ConfigError,
    PixelSizeError,
    SlideFormatError,
    SlideNotFoundError,
    TLSQuantError,
)
from .io import open_slide
from .slide import Level, Slide

try:
    __version__ = version("tlsquant")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "ChannelError",
    "ConfigError",
    "Level",
    "PixelSizeError",
    "Slide",
    "SlideFormatError",
    "SlideNotFoundError",
    "TLSQuantError",
    "__version__",
    "open_slide",
]
