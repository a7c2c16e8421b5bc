"""Validation GED of bf16-autocast training vs fp32 training, same data, seed and schedule (issue #2 benchmark).

Runs the bundle's training twice side by side (``--precision fp32`` and ``--precision bf16``) and prints the best
validation GED16 and the wall time of each, and their ratios.

    python benchmarks/bf16_quality.py [--max-epochs 20] [--workdir /tmp/bf16_quality]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(precision: str, max_epochs: int, workdir: Path) -> tuple[float, float]:
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(REPO / "bundle" / "configs" / "train.yaml"), "--bundle_root", str(REPO / "bundle"),
        "--precision", precision, "--max_epochs", str(max_epochs),
        "--ckpt_dir", str(workdir / precision),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"training with {precision} failed:\n{proc.stderr[-3000:]}")
    geds = [float(v) for v in re.findall(r"val_ged: ([0-9.]+)", proc.stdout + proc.stderr)]
    return min(geds), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bf16_quality"))
    args = parser.parse_args()
    fp32_ged, fp32_s = train("fp32", args.max_epochs, args.workdir)
    bf16_ged, bf16_s = train("bf16", args.max_epochs, args.workdir)
    print(f"fp32: best val GED16 {fp32_ged:.4f}, {fp32_s:.0f} s")
    print(f"bf16: best val GED16 {bf16_ged:.4f}, {bf16_s:.0f} s")
    print(f"bf16 / fp32: GED {bf16_ged / fp32_ged:.3f}x (<= 1 is no worse), time {bf16_s / fp32_s:.2f}x")


if __name__ == "__main__":
    main()
