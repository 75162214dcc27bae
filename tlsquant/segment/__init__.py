"""Segmentation on coarse evidence maps: pure functions on arrays plus the grid bin size."""
