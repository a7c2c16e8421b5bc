"""Command line: S segmentation hypotheses of the lesion at a given centre of one CT image (or of many).

Usage::

    python -m monai_probunet.infer IMAGE --center X Y [Z] [--world [--frame LPS|RAS]] --out DIR \
        [--ckpt bundle/models/model.pt] [--config bundle/configs/train.yaml ...] [--num-samples 16] [--seed 0] \
        [--threshold presence_threshold.json] [--spacing MM [MM]] [--device cpu] [--allow-non-ct] \
        [--no-dicom-seg | [--dicom-seg] [--seg-hypotheses]] [--png]
    python -m monai_probunet.infer --batch centers.json --out DIR [same options]
    python -m monai_probunet.infer VOLUME --center X Y Z --3d [--max-extent-mm 40] --out DIR [same options]

IMAGE is a 2-D CT slice (NIfTI or one DICOM file) or a 3-D CT volume (NIfTI or a DICOM series folder). The centre
is in voxel coordinates of the array as MONAI loads it (NIfTI ``i j [k]``; DICOM ``column row [slice]``), or with
``--world`` in millimetres (``--frame RAS``, the default, or ``LPS`` = DICOM patient coordinates). The network is
built from ``network_def`` of the config file(s) (default: ``configs/train.yaml`` of the bundle holding ``--ckpt``,
else the package's ``bundle/configs/train.yaml``) and
loaded from ``--ckpt`` with ``weights_only=True``; the model's spacing is ``infer_spacing`` of the config (or
``--spacing``; a config without it is refused); the lesion-presence threshold is ``--threshold`` or
``presence_threshold.json`` next to the checkpoint, else the fallback 0.5 rule (with a warning).

Writes into ``--out`` (all at once: a temporary sibling folder moved into place at the end; an ``--out`` holding an
earlier result of this program is replaced, one holding other files is refused): ``hypotheses.nii.gz`` (4-D,
hypothesis = 4th axis), ``mean_probability.nii.gz``, ``entropy.nii.gz``, ``variant_label.nii.gz``,
``presence_label.nii.gz`` (the presence-rule label, what MONAI Label returns; all with the input's affine) and
``report.json`` (its ``presence_label``: the label's segment name, size and rule); prints a short summary with the
label's name (``--json``: the report). With ``--batch`` (a JSON file
``{image: center}`` or ``[{image, center, world, frame, case_id}]``, images relative to the file's folder) the
model is loaded once and every case goes to ``--out/<case_id>/`` plus ``--out/inference_summary.json``. ``--png``
adds ``overview.png`` to the set (:mod:`monai_probunet.overview`; with ``--batch`` to every case's folder, drawn from
its files).

DICOM input (a series folder or one DICOM file) also gets ``seg.dcm``: a DICOM Segmentation of the source series
(or slice), referencing its instances, study and frame of reference, so that the radiologist's viewer or PACS shows
the outline on the images they read. Its segment 1 is the presence-rule label, the label MONAI Label returns
(:meth:`~monai_probunet.hypotheses.Hypotheses.presence_rule_label`, ``presence_label.nii.gz``), named as the
app names it (``lesion p=0.88``); ``--seg-hypotheses`` adds the S hypotheses as segments 2 .. S+1. ``--no-dicom-seg``
skips it; ``--dicom-seg`` (or ``--seg-hypotheses``) with a NIfTI input is refused (no DICOM series to reference);
``--batch`` writes no SEG. A source without a Frame of Reference UID cannot be referenced: the other results are
written and one warning line says why there is no ``seg.dcm`` (``--dicom-seg`` / ``--seg-hypotheses``: refused).

``--3d`` (3-D volumes only; a 2-D image is refused): the lesion is followed from the clicked slice through every slice
it spans (:func:`monai_probunet.predict3d.predict_hypotheses_3d`: hypothesis s keeps its prior noise on every slice,
growth while at least half of the lesion hypotheses continue, at most ``--max-extent-mm``); the set then holds the
3-D hypotheses, the 3-D presence-rule label and 3-D volumes in ``report.json``.

``--batch`` checks every case of its file before running any (unknown keys, a ``center`` that is not 2 or 3 finite
numbers, a ``world`` that is not JSON true/false, a ``frame`` without ``"world": true``); a case that fails while
running (a missing image, a centre outside it) is one line ``<case_id>: failed: <reason>`` on stderr, the other cases
are still written. In a terminal (stderr a tty) a progress bar counts the cases.

Checked up front as well: ``--frame`` only with ``--world``; ``--roi-size`` must be a crop the network runs on (it
halves the crop at each level: the shipped model needs at least 16 px per side); the image resampled to
``--spacing`` may have at most :data:`MAX_RESAMPLED_PIXELS` pixels in-plane (estimated from the header).

Exit status 0 ok, 2 for bad arguments or inputs (one line on stderr naming the file or option) and for a batch in
which any case failed. Heavy imports (torch, MONAI) happen after the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .bundle_utils import EXIT_INTERRUPTED, positive_int, quiet_optional_decoder
from .infer_checks import (
    MAX_RESAMPLED_PIXELS,
    check_resampled_size,
    check_roi_size,
    dicom_headers,
    dicom_source,
    seg_source_problem,
)

__all__ = ["build_parser", "main"]

REPO_BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
DEFAULT_CKPT = REPO_BUNDLE / "models" / "model.pt"
#: optional packages that ``import monai`` loads eagerly (its ``__init__`` imports every submodule, and those import
#: every optional dependency they find) but that the one-image inference path never calls: ignite (with it most of
#: torch.distributed), scipy, mlflow, pandas, scikit-learn, scikit-image, matplotlib, IPython, fastapi, tensorboard.
#: While this CLI imports its modules they are marked absent, so MONAI installs its lazy "optional import" stubs
#: instead (2-3x less import time); afterwards they are importable again for anything that needs them at run time.
#: ``--batch`` (MONAI's evaluator runs the cases: it needs ignite) and ``PROBUNET_FULL_IMPORT=1`` turn this off.
IMPORT_DIET = (
    "ignite", "scipy", "mlflow", "pandas", "sklearn", "skimage", "matplotlib", "IPython", "fastapi", "tensorboard",
)
#: loggers whose lines the CLI replaces by its own (the batch evaluator's per-case errors and summary)
QUIET_LOGGERS = {"monai_probunet.inference_evaluator": logging.CRITICAL, "nibabel": logging.ERROR}



def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ... (see --help)``, exit 2) instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m monai_probunet.infer``."""
    p = _Parser(
        prog="python -m monai_probunet.infer",
        description="Draw S Probabilistic U-Net hypotheses of the lesion at a centre of a CT image and save them "
        "on the image's own grid (NIfTI + report.json; DICOM input: also seg.dcm, a DICOM SEG of the series).",
    )
    p.add_argument("image", nargs="?", help="NIfTI file, one DICOM file, or a DICOM series folder (CT, HU)")
    p.add_argument(
        "--center", nargs="+", type=float, metavar="C",
        help="lesion centre: X Y for a slice, X Y Z for a volume (voxel indices of the loaded array; mm with --world)",
    )
    p.add_argument("--world", action="store_true", help="--center is in world millimetres (see --frame)")
    p.add_argument(
        "--frame", choices=("RAS", "LPS"), default=None, help="with --world: world frame of --center (default RAS)"
    )
    p.add_argument(
        "--batch", default=None, metavar="CENTERS_JSON",
        help="many images, model loaded once: JSON {image: center | {center, world, frame}} or a list of "
        "{image, center, ...}; images relative to the file's folder; results in --out/<case_id>/ (no seg.dcm: run a "
        "DICOM image on its own for its DICOM SEG)",
    )
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier output of this program)")
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help=f"model weights (default {DEFAULT_CKPT})")
    p.add_argument(
        "--config", nargs="+", default=None,
        help="bundle config file(s) defining network_def, hu_window, infer_spacing (default: configs/train.yaml "
        "of the bundle holding --ckpt, else bundle/configs/train.yaml)",
    )
    p.add_argument("--num-samples", type=positive_int, default=16, help="hypotheses to draw (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--threshold", default=None, help="presence_threshold.json (default: next to --ckpt, if any)")
    p.add_argument(
        "--spacing", type=_positive_float, nargs="+", default=None, metavar="MM",
        help="model in-plane spacing in mm (default: infer_spacing of the config); the image resampled to it may "
        f"have at most {MAX_RESAMPLED_PIXELS} px (8192 x 8192) in-plane",
    )
    p.add_argument(
        "--roi-size", type=positive_int, nargs="+", default=None, metavar="PX",
        help="model crop in px (default: infer_roi_size of the config, else 64); the network must run on it (the "
        "shipped model: at least 16 px per side)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--allow-non-ct", action="store_true",
        help="only warn (instead of refusing) when a NIfTI's intensities are not plausibly CT HU (e.g. MR)",
    )
    p.add_argument(
        "--3d", dest="three_d", action="store_true",
        help="3-D volumes: follow the lesion through every slice it spans (3-D hypotheses, presence-rule label, "
        "volumes in mm^3)",
    )
    p.add_argument(
        "--max-extent-mm", type=_positive_float, default=None, metavar="MM",
        help="with --3d: largest lesion extent along the slice axis (default 40)",
    )
    p.add_argument(
        "--dicom-seg", dest="dicom_seg", action=argparse.BooleanOptionalAction, default=None,
        help="write seg.dcm, a DICOM SEG of the input series (or slice) holding the presence-rule label (the label "
        "MONAI Label returns; one segment named like 'lesion p=0.88'), so that a DICOM viewer or PACS overlays it on "
        "the images the radiologist reads. Default: on for DICOM input (a series folder or a DICOM file), off for "
        "NIfTI (nothing to reference: --dicom-seg with NIfTI is refused); --no-dicom-seg skips it",
    )
    p.add_argument(
        "--seg-hypotheses", action="store_true",
        help="DICOM input: the S hypotheses as further segments 2..S+1 of seg.dcm (named like 'h3 variant B 4/16')",
    )
    p.add_argument(
        "--png", action="store_true",
        help="also write overview.png: the clicked slice around the centre (marked) with the presence-rule label and "
        "every hypothesis outlined (the patient's right on the left); with --3d also the label through its slices; "
        "with --batch one in every case's folder",
    )
    p.add_argument("--json", action="store_true", help="print the full JSON report")
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _scalar_or_pair(values: list | None):
    if values is None:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) != 2:
        raise ValueError(f"expected 1 or 2 values (in-plane), got {len(values)}: {values}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 ok, 2 bad arguments or inputs, or a case of a batch failed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch is None and (args.image is None or args.center is None):
        parser.error("give IMAGE and --center, or --batch CENTERS_JSON")
    if args.batch is not None and (args.image is not None or args.center is not None):
        parser.error("--batch takes the images and centres from its file: give no IMAGE / --center with it")
    if args.max_extent_mm is not None and not args.three_d:
        parser.error("--max-extent-mm is a --3d option")
    if args.batch is not None and (args.world or args.frame is not None):
        parser.error('--world/--frame: with --batch each case gives its own "world" / "frame" in CENTERS_JSON')
    if args.frame is not None and not args.world:
        parser.error("--frame only applies with --world")
    if args.seg_hypotheses and args.dicom_seg is False:
        parser.error("--seg-hypotheses adds segments to the DICOM SEG: not with --no-dicom-seg")
    if args.batch is not None and (args.dicom_seg or args.seg_hypotheses):
        parser.error("--dicom-seg/--seg-hypotheses: --batch writes no DICOM SEG; run a DICOM image on its own")
    args.frame = args.frame or "RAS"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    quiet_optional_decoder()
    try:
        spacing = _scalar_or_pair(args.spacing)
        roi_arg = _scalar_or_pair(args.roi_size)
    except ValueError as e:
        parser.error(f"--spacing/--roi-size: {e}")
    try:
        return _run(args, spacing, roi_arg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission denied while writing, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {type(e).__name__}{where}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the results are staged: nothing of this run is in --out
        print(f"interrupted by Ctrl-C; nothing was written ({args.out} is as it was).", file=sys.stderr)
        return EXIT_INTERRUPTED


def _import_inference(full: bool = False):
    """``monai_probunet.inference`` (torch + MONAI), imported without the packages of :data:`IMPORT_DIET` unless
    ``full`` (``--batch`` runs MONAI's evaluator, which needs ignite)."""
    if full or os.environ.get("PROBUNET_FULL_IMPORT", "") not in ("", "0") or "monai" in sys.modules:
        from . import inference

        return inference
    blocked = [name for name in IMPORT_DIET if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError: MONAI stubs it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from . import inference
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return inference


def _run(args: argparse.Namespace, spacing, roi_arg) -> int:
    from .io_utils import staged_dir

    # cheap checks first, before the heavy imports and the model
    if args.batch is None and not Path(args.image).exists():
        raise FileNotFoundError(f"image {args.image} does not exist.")
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {args.ckpt} does not exist (--ckpt).")
    if Path(args.ckpt).stat().st_size == 0:
        raise ValueError(f"checkpoint {args.ckpt} is empty (0 bytes).")
    source = None if args.batch is not None else dicom_source(args.image)
    # the DICOM headers, read once: for the SEG's checks, the loader's (which slices to read) and the SEG itself
    wanted = source is not None
    headers = dicom_headers(source) if wanted else None
    if source is None and (args.dicom_seg or args.seg_hypotheses):
        option = "--dicom-seg" if args.dicom_seg else "--seg-hypotheses"
        raise ValueError(
            f"{option}: {args.image} is not DICOM, so there is no DICOM series for a SEG to reference; give a DICOM "
            f"series folder or DICOM file, or leave out {option}."
        )
    problem = seg_source_problem(source, headers) if source is not None and args.dicom_seg is not False else None
    if problem is not None and (args.dicom_seg or args.seg_hypotheses):
        option = "--dicom-seg" if args.dicom_seg else "--seg-hypotheses"
        raise ValueError(f"{option}: {problem} Leave out {option} for the other results.")
    if problem is not None:  # the SEG is a default extra: the hypotheses do not need it (said once they are written)
        source = None
    seg = {"dicom_source": source, "seg_hypotheses": args.seg_hypotheses, "dicom_headers": headers}
    if args.dicom_seg is False:
        seg = {}

    inf = _import_inference(full=args.batch is not None)
    from .hypotheses import OVERVIEW_NAME
    from .hypotheses import _as_threshold as as_threshold  # loaded with it

    is_ours = inf.is_hypotheses_set if args.batch is None else inf.is_inference_run
    staged_dir(args.out, is_ours=is_ours, what="--out")  # refuses a file / foreign folder / unwritable place
    cases = inf.read_inference_cases(Path(args.batch).parent, args.batch) if args.batch is not None else None
    threshold = as_threshold(args.threshold) if args.threshold else inf.find_presence_threshold(args.ckpt)
    model, settings = inf.load_model(args.ckpt, args.config, device=args.device, spacing=spacing)
    roi = roi_arg if roi_arg is not None else settings["roi_size"]
    images = [c["image"] for c in cases] if cases is not None else [args.image]
    spacing_from = "--spacing" if spacing is not None else "infer_spacing"
    check_resampled_size(images, settings["spacing"], spacing_from, {args.image: headers[0]} if headers else None)
    if roi_arg is not None:  # the config's infer_roi_size is the crop the model was made for
        check_roi_size(model, roi, args.device, "--roi-size")
    mode3d = {"three_d": True, "max_extent_mm": args.max_extent_mm or 40.0} if args.three_d else {}

    def draw_overview(hyp):
        """``--png``: the overview drawn into the staged set, so that it arrives with the rest or not at all."""
        if not args.png:
            return None
        arrays = (hyp.labels, hyp.presence_rule_label()[0])
        return lambda folder: _write_overview(inf, args.image, folder, settings["hu_window"], args.allow_non_ct, arrays,
                                              dicom_headers=headers)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if cases is not None:
            summary = inf.infer_cases(
                model, cases, args.out, spacing=settings["spacing"], roi_size=roi, num_samples=args.num_samples,
                seed=args.seed, hu_window=settings["hu_window"], threshold=threshold, device=args.device,
                progress=sys.stderr.isatty(), allow_non_ct=args.allow_non_ct, checkpoint=str(args.ckpt), **mode3d,
            )
        elif args.three_d:
            from .predict3d import predict_hypotheses_3d

            hyp = predict_hypotheses_3d(
                args.image, args.center, model, world=args.world, frame=args.frame, spacing=settings["spacing"],
                roi_size=roi, num_samples=args.num_samples, seed=args.seed, threshold=threshold,
                hu_window=settings["hu_window"], device=args.device, allow_non_ct=args.allow_non_ct,
                max_extent_mm=mode3d["max_extent_mm"], dicom_headers=headers,
            )
            paths = hyp.save(args.out, **seg, then=draw_overview(hyp))
        else:
            hyp = inf.predict_hypotheses(
                args.image, args.center, model, world=args.world, frame=args.frame, spacing=settings["spacing"],
                roi_size=roi, num_samples=args.num_samples, seed=args.seed, threshold=threshold,
                hu_window=settings["hu_window"], device=args.device, allow_non_ct=args.allow_non_ct,
                dicom_headers=headers,
            )
            paths = hyp.save(args.out, **seg, then=draw_overview(hyp))
    for w in caught:
        text = str(w.message)
        if "presence threshold" in text or "allow_non_ct" in text or threshold is None and "0.5 rule" in text:
            print(f"warning: {text}", file=sys.stderr)
    if problem is not None:
        print(f"warning: no seg.dcm: {problem} The other results are written.", file=sys.stderr)
    if cases is not None:
        if args.json:
            print(json.dumps(summary, indent=1))
        for row in summary["cases"]:
            if "error" in row:  # the summary's error is "<exception class>: <message>": the message alone
                reason = _one_line(re.sub(r"^\w+: ", "", row["error"]))
                print(f"{row['case_id']}: failed: {reason}", file=sys.stderr)
            else:
                print(
                    f"{row['case_id']}: lesion presence {row['presence_probability']:.3f}, ambiguous="
                    f"{row['ambiguous']}, the label: {row['label']}, {row['num_variants']} variant(s), mean area "
                    f"{row['mean_area_mm2']:.1f} mm^2"
                )
        print(f"{summary['num_ok']} ok, {summary['num_failed']} failed -> {Path(args.out)}")
        dicom = [str(r["case_id"]) for r in summary["cases"]
                 if "error" not in r and dicom_source(str(r["image"])) is not None]
        if dicom and args.dicom_seg is not False:
            print(f"note: --batch writes no seg.dcm (DICOM SEG); for that of {', '.join(dicom[:3])}"
                  f"{' ...' if len(dicom) > 3 else ''} run the image on its own.", file=sys.stderr)
        if args.png:
            written = [row for row in summary["cases"] if "error" not in row]
            for row in written:
                _write_overview(inf, row["image"], Path(row["output_dir"]), settings["hu_window"], args.allow_non_ct)
            print(f"pictures: overview.png in each of the {len(written)} case folders")
        return 2 if summary["num_failed"] else 0
    report = json.loads(Path(paths["report"]).read_text())
    picture = Path(args.out) / OVERVIEW_NAME if args.png else None
    if args.json:
        print(json.dumps(report, indent=1))
    elif args.three_d:
        print(
            f"{hyp.source} at {_where(hyp)}: {hyp.num_samples} 3-D hypotheses over {hyp.extent_slices} slice(s) "
            f"{list(hyp.slice_indices)[:1] + list(hyp.slice_indices)[-1:]} ({report['extent_mm']:.1f} mm), lesion "
            f"presence {hyp.presence_probability:.3f} ({hyp.presence_count}/{hyp.num_samples}) on the clicked slice, "
            f"ambiguous={hyp.ambiguous}; the label: {_label_said(report)}; volume median of the lesion hypotheses "
            f"{_median_nonzero(hyp.volumes_mm3):.0f} mm^3 -> {Path(args.out)}"
        )
    else:
        top = hyp.variants[0]
        print(
            f"{hyp.source} at {_where(hyp)}: {hyp.num_samples} hypotheses, lesion presence "
            f"{hyp.presence_probability:.3f} ({hyp.presence_count}/{hyp.num_samples}), ambiguous={hyp.ambiguous}; "
            f"the label: {_label_said(report)}; "
            f"{len(hyp.variants)} variant(s), most frequent {top.frequency:.3f} (area {top.area_mm2:.1f} mm^2); "
            f"area mean {hyp.areas_mm2.mean():.1f} +/- {hyp.areas_mm2.std():.1f} mm^2 -> {Path(args.out)}"
        )
    if picture is not None and not args.json:
        print(f"picture {picture}")
    if not args.json and "dicom_seg" in report:
        names = report["dicom_seg"]["segments"]
        more = f" + {len(names) - 1} hypotheses" if len(names) > 1 else ""
        print(
            f"DICOM SEG {Path(args.out) / report['files']['dicom_seg']}: segment 1 '{names[0]}'{more}, of series "
            f"{report['dicom_seg']['ReferencedSeriesInstanceUID']}"
        )
    return 0


def _write_overview(inf, image: str | Path, folder: Path, hu_window, allow_non_ct: bool, arrays=None,
                    dicom_headers=None) -> Path:
    """``overview.png`` in a result's ``folder`` (:func:`~monai_probunet.overview.result_overview`), from its
    ``report.json`` and ``arrays`` (the hypotheses and the presence-rule label: else its files) on ``image``; of a
    DICOM series only the slices the picture shows are read (``load_ct``'s ``near``; ``dicom_headers`` if read)."""
    import nibabel as nib
    import numpy as np

    from .dicom_slab import ReadNear
    from .hypotheses import OVERVIEW_NAME, PRESENCE_LABEL_NAME, REPORT_NAME
    from .overview import result_overview

    report = json.loads((folder / REPORT_NAME).read_text())
    voxel, reach = report.get("center_voxel") or [], 0.0
    if report.get("mode") == "3d" and report.get("slices"):  # the label's slices and one beyond each end
        beyond = max(abs(int(k) - int(report["slice_index"])) for k in report["slices"]) + 1
        reach = beyond * float(report["slice_thickness_mm"])
    near = ReadNear(voxel, mm_each_side=reach) if len(voxel) == 3 else None
    if arrays is None:
        stack = np.asarray(nib.load(str(folder / "hypotheses.nii.gz")).dataobj)  # *spatial x S; a slice H x W x 1 x S
        labels = np.moveaxis(stack[:, :, 0] if len(report["spatial_shape"]) == 2 else stack, -1, 0)
        arrays = (labels, np.asarray(nib.load(str(folder / PRESENCE_LABEL_NAME)).dataobj))
    volume, _ = inf.load_ct(image, allow_non_ct=allow_non_ct, dicom_headers=dicom_headers, near=near)
    return result_overview(np.asarray(volume.array)[0], report, *arrays, folder / OVERVIEW_NAME, tuple(hu_window))


def _label_said(report: dict) -> str:
    """The presence-rule label as the CLI prints it: its segment name and, where it shows a lesion, its size
    (``lesion p=0.75, 941 mm^3``; ``no lesion p=0.19 ambiguous``)."""
    label = report["presence_label"]
    if not label["shows_lesion"]:
        return label["name"]
    size = f"{label['volume_mm3']:.0f} mm^3" if "volume_mm3" in label else f"{label['area_mm2']:.0f} mm^2"
    return f"{label['name']}, {size}"


def _where(hyp) -> str:
    """The centre as voxel indices and as RAS millimetres, so that a user sees which slice and point ran."""
    voxel = ", ".join(f"{v:g}" for v in hyp.center_voxel)
    ras = ", ".join(f"{v:.1f}" for v in hyp.center_world_ras)
    return f"voxel ({voxel}) = RAS ({ras}) mm"


def _median_nonzero(values) -> float:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return float(np.median(v[v > 0])) if (v > 0).any() else 0.0


if __name__ == "__main__":
    sys.exit(main())
