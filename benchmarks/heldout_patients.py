"""A larger test set for ``lidc_phantom``: patients that the default dataset leaves out, and the reference rows on it.

The default test split holds 13 patients (262 images), so a model's GED16 there depends on which lesions those 13
patients have. This script writes a second dataset in the project's on-disk format from ``--patients`` further
patients with outlined nodules. It draws them outside the default's 90 (``--num-patients`` / ``--data-seed``, as in
``train.yaml``), with the same image settings. All but four go to its test split; the validation split keeps two, for
the presence rule the evaluation fits. It then prints the reference rows (majority vote, empty, graders) on its test
split; the ``shown by size`` row is fitted on ``--size-fit`` (the default dataset's training split, when it has been
generated). A model trained by the README's command never saw these patients. Score it with

    python -m monai.bundle run evaluating --config_file "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']" \\
        --dataset_name folder --dataset_dir DIR --output_dir OUT --ckpt_dir MODEL_DIR   # bundle/models: the shipped one

and split the result by readers with ``python benchmarks/ged_by_readers.py --datalist DIR/datalist.json
--per-image OUT/per_image.csv``.

    python benchmarks/heldout_patients.py --out /tmp/lidc_phantom_heldout            # 60 patients
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from reference_rows import reference_rows

from monai_probunet.data.disk_format import DatasetError
from monai_probunet.data.lidc_phantom import generate_lidc_phantom, other_phantom_patients, select_phantom_patients

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a new or empty folder (or one this script wrote before)")
    parser.add_argument("--patients", type=int, default=60, help="further patients (at least 5)")
    parser.add_argument("--seed", type=int, default=7, help="draws the further patients")
    parser.add_argument("--num-patients", type=int, default=90, help="the default dataset's num_patients")
    parser.add_argument("--data-seed", type=int, default=0, help="the default dataset's data_seed")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--center-crop", type=int, default=128)
    parser.add_argument(
        "--size-fit", default=str(REPO / "bundle" / "data" / "lidc_phantom" / "datalist.json"),
        help="datalist.json whose training split fits the 'shown by size' row (if missing: this dataset's own)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.patients < 5:
        print(f"error: --patients {args.patients}: expected at least 5 (2 validation, 1 training, the rest test).",
              file=sys.stderr)  # fmt: skip
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pylidc's deprecation warnings
        try:
            default = select_phantom_patients(args.data_seed, args.num_patients)
            patients = other_phantom_patients(default, args.patients, args.seed)
            datalist = generate_lidc_phantom(
                args.out, seed=args.data_seed, num_patients=None, patients=patients,
                split=[2, 2, args.patients - 4], image_size=args.image_size, center_crop=args.center_crop,
            )  # fmt: skip
        except (ValueError, DatasetError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    size_fit = args.size_fit if Path(args.size_fit).is_file() else None
    rows = reference_rows(datalist, "test", size_fit=size_fit)
    print(f"{datalist}: {len(patients)} patients outside the default's {args.num_patients}; test split "
          f"{rows.pop('images')} images, GED16 (lower is better):")  # fmt: skip
    for name, value in rows.items():
        print(f"  {name:34s} {value:.4f}")
    print(f"('shown by size' fitted on the training split of {size_fit or datalist})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
