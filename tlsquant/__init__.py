"""tlsquant: quantify tertiary lymphoid structures in multiplex immunofluorescence slides."""

from ._version import __version__
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

# the rest on first use (PEP 562): a CLI command imports only what it runs, not scipy.stats,
# pandas and dask for `tlsquant --version` or `info`
_LAZY = {
    "Config": ".config", "load_config": ".config", "open_slide": ".io", "SlideResult": ".pipeline",
    "analyze_slide": ".pipeline", "Level": ".slide", "Slide": ".slide", "compare_groups": ".stats",
    "analyze_to_folder": ".workflow",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tlsquant' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


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
