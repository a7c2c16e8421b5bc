"""Moved to :mod:`monai_probunet.handlers.progress`; re-exported here for existing configs and code."""

from ..handlers.progress import TrainingProgress, format_duration

__all__ = ["TrainingProgress", "format_duration"]
