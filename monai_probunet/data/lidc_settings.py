"""The options of the LIDC-IDRI preprocessing that change its output (read by the DICOM reader and the case writer),
and the names of its output's own folders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LIDC_VERSION", "MANIFEST_DIR", "STAGING_DIR", "LIDCSettings"]

#: version of the written dataset; a manifest of another version is redone
LIDC_VERSION = 1
#: the output's folder of per-scan manifests (``<out>/scans/<scan id>.json``)
MANIFEST_DIR = "scans"
#: the output's folder where a scan's files are written before they are moved into place
STAGING_DIR = ".staging"


@dataclass(frozen=True)
class LIDCSettings:
    """Options that change the output; a manifest written with other settings is redone, not skipped."""

    slice_location_filter: bool = True
    tolerance_mm: float = 1e-3
    spacing_mm: float = 0.5
    crop_size: int = 180
    version: int = LIDC_VERSION

    def as_dict(self) -> dict[str, Any]:
        """The settings as stored in each scan's manifest and in ``datalist.json``."""
        return {
            "slice_location_filter": self.slice_location_filter,
            "tolerance_mm": self.tolerance_mm,
            "spacing_mm": self.spacing_mm,
            "crop_size": self.crop_size,
            "version": self.version,
        }
