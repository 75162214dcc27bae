"""tlsquant: quantify tertiary lymphoid structures in multiplex immunofluorescence slides."""

from ._version import __version__
from .config import Config, load_config
from .errors import (
    ChannelError,
    ConfigError,
    CorruptSlideError,
    OutputError,
    PixelSizeError,
    SlideFormatError,
    SlideNotFoundError,
    StaleResultError,
    TLSQuantError,
)
from .io import open_slide
from .pipeline import SlideResult, analyze_slide
from .slide import Level, Slide
from .stats import compare_groups
from .workflow import analyze_to_folder

__all__ = [
    "ChannelError",
    "Config",
    "ConfigError",
    "CorruptSlideError",
    "OutputError",
    "Level",
    "PixelSizeError",
    "Slide",
    "SlideFormatError",
    "SlideNotFoundError",
    "SlideResult",
    "StaleResultError",
    "TLSQuantError",
    "__version__",
    "analyze_slide",
    "analyze_to_folder",
    "compare_groups",
    "load_config",
    "open_slide",
]
