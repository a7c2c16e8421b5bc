"""Command line: S segmentation hypotheses of the lesion at a given centre of one CT image.

Usage::

    python -m monai_probunet.infer IMAGE --center X Y [Z] [--world [--frame LPS|RAS]] --out DIR \
        [--ckpt bundle/models/model.pt] [--config bundle/configs/train.yaml ...] [--num-samples 16] [--seed 0] \
        [--threshold presence_threshold.json] [--device cpu]

IMAGE is a 2-D CT slice (NIfTI or one DICOM file) or a 3-D CT volume (NIfTI or a DICOM series folder). The centre
is in voxel coordinates of the array as MONAI loads it (NIfTI ``i j [k]``; DICOM ``column row [slice]``), or with
``--world`` in millimetres (``--frame RAS``, the default, or ``LPS`` = DICOM patient coordinates). The network is
built from ``network_def`` of the config file(s) (default: the repository's ``bundle/configs/train.yaml``) and
loaded from ``--ckpt`` with ``weights_only=True``; the lesion-presence threshold is ``--threshold`` or
``presence_threshold.json`` next to the checkpoint, else the fallback 0.5 rule (with a warning).

Writes into ``--out``: ``hypotheses.nii.gz`` (4-D, hypothesis = 4th axis), ``mean_probability.nii.gz``,
``entropy.nii.gz``, ``variant_label.nii.gz`` (all with the input's affine) and ``report.json``; prints a short
summary (``--json``: the report). Exit status 2 for bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .inference import REPO_CONFIG, find_presence_threshold, load_model, predict_hypotheses

__all__ = ["build_parser", "main"]

DEFAULT_CKPT = REPO_CONFIG.parents[1] / "models" / "model.pt"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m monai_probunet.infer``."""
    p = argparse.ArgumentParser(
        prog="python -m monai_probunet.infer",
        description="Draw S Probabilistic U-Net hypotheses of the lesion at a centre of a CT image and save them "
        "on the image's own grid (NIfTI + report.json).",
    )
    p.add_argument("image", help="NIfTI file, one DICOM file, or a DICOM series folder (CT, HU)")
    p.add_argument(
        "--center", nargs="+", type=float, required=True, metavar="C",
        help="lesion centre: X Y for a slice, X Y Z for a volume (voxel indices of the loaded array; mm with --world)",
    )
    p.add_argument("--world", action="store_true", help="--center is in world millimetres (see --frame)")
    p.add_argument("--frame", choices=("RAS", "LPS"), default="RAS", help="world frame of --center (default RAS)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help=f"model weights (default {DEFAULT_CKPT})")
    p.add_argument(
        "--config", nargs="+", default=None,
        help="bundle config file(s) defining network_def and hu_window (default: bundle/configs/train.yaml)",
    )
    p.add_argument("--num-samples", type=int, default=16, help="hypotheses to draw (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--threshold", default=None, help="presence_threshold.json (default: next to --ckpt, if any)")
    p.add_argument("--spacing", type=float, nargs="+", default=None, help="model spacing in mm (default: config / 0.5)")
    p.add_argument("--roi-size", type=int, nargs="+", default=None, help="model crop in px (default: config / 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print the full JSON report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad arguments or inputs)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        model, settings = load_model(args.ckpt, args.config, device=args.device)
        threshold = args.threshold if args.threshold else find_presence_threshold(args.ckpt)
        spacing = args.spacing if args.spacing else settings["spacing"]
        roi = args.roi_size if args.roi_size else settings["roi_size"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            hyp = predict_hypotheses(
                args.image, args.center, model, world=args.world, frame=args.frame,
                spacing=spacing[0] if isinstance(spacing, list) and len(spacing) == 1 else spacing,
                roi_size=roi[0] if isinstance(roi, list) and len(roi) == 1 else roi,
                num_samples=args.num_samples, seed=args.seed, threshold=threshold,
                hu_window=settings["hu_window"], device=args.device,
            )
        for w in caught:
            if "presence threshold" in str(w.message):
                print(f"warning: {w.message}", file=sys.stderr)
        paths = hyp.save(args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = json.loads(Path(paths["report"]).read_text())
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        top = hyp.variants[0]
        print(
            f"{hyp.source}: {hyp.num_samples} hypotheses, lesion presence {hyp.presence_probability:.3f} "
            f"({hyp.presence_count}/{hyp.num_samples}), ambiguous={hyp.ambiguous}; {len(hyp.variants)} variant(s), "
            f"most frequent {top.frequency:.3f} (area {top.area_mm2:.1f} mm^2); area mean "
            f"{hyp.areas_mm2.mean():.1f} +/- {hyp.areas_mm2.std():.1f} mm^2 -> {Path(args.out)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
