"""Moved to :mod:`monai_probunet.handlers.ged_handler`; re-exported here for existing configs and code."""

from ..handlers.ged_handler import GeneralizedEnergyDistance

__all__ = ["GeneralizedEnergyDistance"]
