"""Everything that touches files: slide readers and writers."""

from .reader import open_slide, read_channel_names

__all__ = ["open_slide", "read_channel_names"]
