"""Moved to :mod:`monai_probunet.handlers.checkpoint`; re-exported here for existing configs and code."""

from ..handlers.checkpoint import AtomicCheckpointSaver, LastCheckpoint

__all__ = ["AtomicCheckpointSaver", "LastCheckpoint"]
