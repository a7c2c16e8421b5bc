"""Moved to :mod:`monai_probunet.handlers.tracking`; re-exported here for existing configs and code."""

from ..handlers.tracking import MLflowSampleGrid, configure_mlflow, flatten_params, iteration_terms

__all__ = ["MLflowSampleGrid", "configure_mlflow", "flatten_params", "iteration_terms"]
