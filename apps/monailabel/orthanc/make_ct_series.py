"""Write a small CT series with real DICOM geometry (from pydicom's CT_small.dcm) and optionally store it in Orthanc.

    python apps/monailabel/orthanc/make_ct_series.py OUT_DIR [--slices 8] [--store http://127.0.0.1:8042]

Each slice is CT_small.dcm (128 x 128, 0.66 mm pixels, rescale slope 1 / intercept -1024) with lung parenchyma
(-850 HU) within ``--radius`` + 12 mm of pixel ``(row 64, column 56)`` on every slice and a round soft-tissue lesion
(40 HU, radius ``--radius`` mm) painted in it on the middle slices: a nodule in lung, as a radiologist would click
one (pasted onto the slice's soft tissue it would be all but invisible). The slices are stacked
along the slice normal every ``--thickness`` mm (``ImagePositionPatient``, ``SliceThickness``,
``SpacingBetweenSlices``); study, series, frame-of-reference and instance UIDs are derived from ``--seed`` (same
seed, same UIDs). ``--store`` POSTs every file to Orthanc's REST API (``/instances``).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

import numpy as np

LESION_HU = 40.0
LUNG_HU = -850.0
LUNG_MARGIN_MM = 12.0


def make_series(out: Path, slices: int = 8, thickness: float = 2.5, radius_mm: float = 5.0, seed: int = 0,
                center_rc: tuple[int, int] = (64, 56)) -> list[Path]:
    """Write ``slices`` CT files ``out/slice_XXX.dcm``; returns their paths (slice order)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pydicom.valuerep import DS

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = src.pixel_array.astype(np.float64) * float(src.RescaleSlope) + float(src.RescaleIntercept)
    rows, cols = base.shape
    dr, dc = (float(v) for v in src.PixelSpacing)
    iop = np.array([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp0 = np.array([float(v) for v in src.ImagePositionPatient])
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    dist2 = ((rr - center_rc[0]) * dr) ** 2 + ((cc - center_rc[1]) * dc) ** 2
    disk = dist2 <= radius_mm**2
    base[dist2 <= (radius_mm + LUNG_MARGIN_MM) ** 2] = LUNG_HU
    lesion_slices = range(slices // 4, slices - slices // 4)
    uid = lambda name: generate_uid(entropy_srcs=[f"monai-probunet-ct-series-{seed}-{name}"])  # noqa: E731
    study, series, frame = uid("study"), uid("series"), uid("frame")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(slices):
        ds = src.copy()
        hu = base.copy()
        if k in lesion_slices:
            hu[disk] = LESION_HU
        stored = np.round((hu - float(src.RescaleIntercept)) / float(src.RescaleSlope)).astype(src.pixel_array.dtype)
        ds.PixelData = stored.tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = uid(f"instance-{k}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        # decimal strings of at most 16 characters, as DICOM's DS requires (a float's repr can be 19)
        ds.ImagePositionPatient = [DS(float(v), auto_format=True) for v in ipp0 + k * thickness * normal]
        ds.SliceLocation = DS(float(np.dot(ipp0 + k * thickness * normal, normal)), auto_format=True)
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SeriesDescription = "monai-probunet test CT series"
        ds.SeriesNumber = 1
        ds.PatientID = ds.PatientID or "PROBUNET1"
        path = out / f"slice_{k:03d}.dcm"
        tmp = path.with_suffix(".tmp")
        ds.save_as(str(tmp))
        tmp.replace(path)
        paths.append(path)
    return paths


def store(paths: list[Path], orthanc_url: str) -> None:
    """POST each file to Orthanc's ``/instances``."""
    for p in paths:
        req = urllib.request.Request(f"{orthanc_url.rstrip('/')}/instances", data=p.read_bytes(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=60) as r:
            if r.status != 200:
                raise RuntimeError(f"Orthanc answered {r.status} for {p}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the slice files")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--thickness", type=float, default=2.5, help="slice spacing in mm")
    ap.add_argument("--radius", type=float, default=5.0, help="lesion radius in mm")
    ap.add_argument("--seed", type=int, default=0, help="seeds the UIDs")
    ap.add_argument("--store", metavar="ORTHANC_URL", help="e.g. http://127.0.0.1:8042")
    args = ap.parse_args(argv)
    if args.slices < 1 or args.thickness <= 0 or args.radius <= 0:
        print("make_ct_series: --slices must be >= 1, --thickness and --radius > 0", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"make_ct_series: {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    paths = make_series(args.out, args.slices, args.thickness, args.radius, args.seed)
    print(f"wrote {len(paths)} slices to {args.out}")
    if args.store:
        try:
            store(paths, args.store)
        except OSError as e:
            print(f"make_ct_series: could not store in Orthanc at {args.store}: {e}", file=sys.stderr)
            return 2
        print(f"stored in {args.store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
