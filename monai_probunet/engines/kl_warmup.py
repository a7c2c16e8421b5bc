"""Moved to :mod:`monai_probunet.handlers.kl_warmup`; re-exported here for existing configs and code."""

from ..handlers.kl_warmup import KLWarmup

__all__ = ["KLWarmup"]
