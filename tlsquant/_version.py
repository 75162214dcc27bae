"""The installed tlsquant version (recorded in every output)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tlsquant")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
