"""Deprecated alias: the calibration workflow is :mod:`monai_probunet.calibration`, its figures are in
:mod:`monai_probunet.visualize`. Kept so that existing configs and scripts that name this module keep working."""

from __future__ import annotations

import warnings

from .calibration import (
    CALIBRATION_JSON,
    ORACLE,
    evaluate_calibration,
    evaluate_posterior_flips,
    run_calibration,
)
from .visualize import SCENE_PALETTE, colourise, label_sample_grid, mode_calibration_plot, pixel_marginals_plot

__all__ = [
    "CALIBRATION_JSON",
    "ORACLE",
    "SCENE_PALETTE",
    "colourise",
    "evaluate_calibration",
    "evaluate_posterior_flips",
    "label_sample_grid",
    "mode_calibration_plot",
    "pixel_marginals_plot",
    "run_calibration",
]

warnings.warn(
    "monai_probunet.calibration_plots is deprecated: use monai_probunet.calibration (workflow) and "
    "monai_probunet.visualize (figures).",
    DeprecationWarning,
    stacklevel=2,
)
