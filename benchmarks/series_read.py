"""A click on a thin-slice DICOM series: the inference CLI reading the whole series against only the slices the
click needs (:mod:`monai_probunet.dicom_slab`), side by side in one run.

Writes a synthetic axial series (CT_small.dcm's header, ``--size`` x ``--size`` pixels of 0.7 mm, ``--slices``
slices of 0.625 mm, lung at -850 HU with a 12 mm nodule of 40 HU in its middle), then times, alternating round by
round in fresh interpreters, ``load_ct`` of the folder whole and of the slab a 2-D and a 3-D click read (wall, CPU
and peak memory of the child), and the CLI's 2-D and 3-D runs on it (``python -m monai_probunet.infer``). Prints the
CPU model and whether it computes bf16 natively.

    python benchmarks/series_read.py                         # 700 slices of 512 x 512, 2 rounds
    python benchmarks/series_read.py --slices 300 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIXEL_MM, SLICE_MM, NODULE_MM = 0.7, 0.625, 6.0

LOAD = """
import sys, time
from monai_probunet.ct_io import load_ct
from monai_probunet.dicom_slab import ReadNear
folder, z, reach = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
near = None if reach < 0 else ReadNear([0.0, 0.0, z], world=True, frame="LPS", mm_each_side=reach)
t0 = time.perf_counter()
img, _ = load_ct(folder, near=near)
print(time.perf_counter() - t0)
"""


def write_series(folder: Path, slices: int, size: int) -> tuple[float, float, float]:
    """The series; returns the nodule's centre in LPS mm."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series, frame = (generate_uid(entropy_srcs=[f"series-read-{n}"]) for n in ("study", "series", "frame"))
    rows = np.arange(size)[:, None]
    cols = np.arange(size)[None, :]
    middle, origin = size // 2, -PIXEL_MM * (size // 2)
    lung = (rows - middle) ** 2 + (cols - middle) ** 2 <= (0.4 * size) ** 2
    nodule_rc, nodule_k = (middle, middle - size // 10), slices // 2
    folder.mkdir(parents=True)
    for k in range(slices):
        ds = base.copy()
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.ImagePositionPatient = [origin, origin, k * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"series-read-{k}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        hu = np.where(lung, -850.0, 40.0)
        r2 = ((rows - nodule_rc[0]) * PIXEL_MM) ** 2 + ((cols - nodule_rc[1]) * PIXEL_MM) ** 2
        hu[r2 + ((k - nodule_k) * SLICE_MM) ** 2 <= NODULE_MM**2] = 40.0
        ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
        ds.PixelData = np.round(hu - float(ds.RescaleIntercept)).astype(np.int16).tobytes()
        ds.save_as(folder / f"s{k:04d}.dcm", enforce_file_format=True)
    return origin + nodule_rc[1] * PIXEL_MM, origin + nodule_rc[0] * PIXEL_MM, nodule_k * SLICE_MM


def timed(cmd: list[str]) -> tuple[float, float, float, str]:
    """``(wall s, CPU s, peak memory GB, stdout)`` of one child process (its own ``wait4`` usage); raises if it
    fails."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=str(REPO))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{err.read().decode()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, out.read().decode()  # maxrss: KB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=700, help="slices of the series (default 700)")
    parser.add_argument("--size", type=int, default=512, help="pixels per row and column (default 512)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every variant, alternated (default 2)")
    args = parser.parse_args(argv)
    if args.slices < 20 or args.size < 128 or args.rounds < 1:
        parser.error("--slices >= 20, --size >= 128 and --rounds >= 1 are needed")
    from monai_probunet.engines.precision import cpu_model_name, native_bf16_text

    print(f"CPU: {cpu_model_name()}; {native_bf16_text()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        x, y, z = write_series(folder, args.slices, args.size)
        out = Path(tmp) / "out"
        cli = [sys.executable, "-m", "monai_probunet.infer", str(folder), "--center", str(x), str(y), str(z),
               "--world", "--frame", "LPS", "--out", str(out)]  # fmt: skip
        load = [sys.executable, "-c", LOAD, str(folder), str(z)]
        variants = {
            "load_ct, whole series": load + ["-1"],
            "load_ct, a 2-D click's slab": load + ["0"],
            "load_ct, a 3-D click's slab (40 mm each side)": load + ["40"],
            "CLI, 2-D click": cli,
            "CLI, 3-D click (--3d)": cli + ["--3d"],
        }
        results: dict[str, list[tuple[float, float, float, str]]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, cmd in variants.items():
                results[name].append(timed(cmd))
    print(f"a {args.size} x {args.size} x {args.slices} axial series, {args.rounds} rounds alternated, median:")
    whole = statistics.median(float(r[3]) for r in results["load_ct, whole series"])
    for name, runs in results.items():
        wall, cpu, peak = (statistics.median(r[i] for r in runs) for i in range(3))
        line = f"  {name:46s} {wall:6.1f} s wall, {cpu:6.1f} s CPU, {peak:5.2f} GB peak"
        if name.startswith("load_ct"):  # the reading alone, timed in the child (its imports left out)
            read = statistics.median(float(r[3]) for r in runs)
            line += f"; reading {read:.1f} s" + (f" ({whole / read:.1f}x faster)" if read != whole else "")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
