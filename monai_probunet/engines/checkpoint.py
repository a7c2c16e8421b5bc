"""Moved to :mod:`monai_probunet.handlers`; re-exported here for existing configs and code."""

from ..handlers.checkpoint import LastCheckpoint
from ..handlers.model_files import AtomicCheckpointSaver

__all__ = ["AtomicCheckpointSaver", "LastCheckpoint"]
