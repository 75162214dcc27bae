"""tlsquant: quantify tertiary lymphoid structures in multiplex immunofluorescence slides."""

from ._version import __version__
from .config import Config, load_config
from .errors import (
    ChannelError,
    ConfigError,
    PixelSizeError,
    SlideFormatError,
    SlideNotFoundError,
    TLSQuantError,
)
from .io import open_slide
from .pipeline import SlideResult, analyze_slide
from .slide import Level, Slide
from .stats import compare_groups

__all__ = [
    "ChannelError",
    "Config",
    "ConfigError",
    "Level",
    "PixelSizeError",
    "Slide",
    "SlideFormatError",
    "SlideNotFoundError",
    "SlideResult",
    "TLSQuantError",
    "__version__",
    "analyze_slide",
    "compare_groups",
    "load_config",
    "open_slide",
]
