"""Many-image inference: the cases of a folder (:func:`read_inference_cases`), one loaded model run over them by
MONAI's ``SupervisedEvaluator`` with the whole run written at once (:func:`infer_cases`,
:mod:`~monai_probunet.inference_evaluator`), and the bundle entry :func:`run_inference` (id ``inferring``, through
the ``evaluator`` id).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .bundle_utils import UserInputError
from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE, SPACING_HINT, WORLD_FRAMES, _pair
from .hypotheses import FALLBACK_RULE, _as_threshold, is_inference_run
from .inference_evaluator import _safe_case_id, inference_evaluator  # noqa: F401 -- _safe_case_id: re-exported
from .inference_transforms import HypothesesInferer, inference_postprocessing, inference_preprocessing
from .io_utils import read_json
from .metrics import PresenceThreshold
from .model_loading import check_device, find_presence_threshold

__all__ = [
    "CASE_KEYS",
    "FailedCasesError",
    "failed_cases_message",
    "infer_cases",
    "inference_cases",
    "read_inference_cases",
    "resolve_threshold",
    "run_inference",
]


def failed_cases_message(summary: Mapping[str, Any], output_dir: str | os.PathLike) -> str:
    """One line on the failed cases of a run's summary: how many, which (the first five), where the rest went.

    Args:
        summary: :func:`infer_cases`' summary (``num_ok``, ``num_failed``, ``cases``).
        output_dir: the run's folder.
    """
    failed = [str(r["case_id"]) for r in summary["cases"] if "error" in r]
    names = ", ".join(failed[:5]) + (f", ... ({len(failed) - 5} more)" if len(failed) > 5 else "")
    done = (
        f"the {summary['num_ok']} good case(s) are written to {output_dir}"
        if summary["num_ok"]
        else f"nothing but the summary is written to {output_dir}"
    )
    return (
        f"{len(failed)} of {len(summary['cases'])} case(s) failed ({names}); {done} (inference_summary.json holds "
        "each error)."
    )


class FailedCasesError(UserInputError, ValueError):
    """Some cases of a bundle run failed (bad images, centres outside them, ...); the good ones are written.

    A user error (:class:`~monai_probunet.bundle_utils.UserInputError`): the bundle command prints the message as one
    line and exits with status 2.

    Args:
        summary: the run's summary (:func:`infer_cases`), kept as :attr:`summary`.
        output_dir: the run's folder.
    """

    def __init__(self, summary: Mapping[str, Any], output_dir: str | os.PathLike) -> None:
        super().__init__(failed_cases_message(summary, output_dir))
        self.summary = dict(summary)


def inference_cases(
    dataset_dir: str | os.PathLike, centers: str | os.PathLike | None = None, split: str = "test"
) -> list[dict[str, Any]]:
    """:func:`read_inference_cases` for the bundle (the evaluator's data, id ``infer_cases``): a bad source is one
    line.

    Raises:
        ConfigValueError: No cases, a missing or malformed ``centers.json`` / ``datalist.json``.
    """
    from .bundle_utils import ConfigValueError

    try:
        return read_inference_cases(dataset_dir, centers, split)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigValueError(str(e)) from e


#: the keys a case of a centers file may have (a list entry also has ``image``)
CASE_KEYS = ("center", "world", "frame", "case_id")


def _json_repr(value: Any) -> str:
    """``value`` as it reads in the JSON file, with its kind when it is no JSON number or boolean."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f"{text} (a string)" if isinstance(value, str) else text


def _check_center(center: Any, where: str, case: str) -> list[float]:
    """``center`` as a list of 2 or 3 floats; a ``ValueError`` naming ``where``, ``case`` and ``"center"`` if it is
    anything else (booleans, strings, ``null``, non-finite numbers, the wrong length)."""
    ok = (
        isinstance(center, (list, tuple))
        and len(center) in (2, 3)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in center)
    )
    if not ok:
        raise ValueError(
            f'{where}: case {case!r}: "center" must be a list of 2 or 3 finite numbers (voxel coordinates, or '
            f'millimetres with "world": true), got {_json_repr(center)}.'
        )
    return [float(v) for v in center]


def _check_world_frame(raw: Mapping, where: str, case: str) -> tuple[bool, str]:
    """``(world, frame)`` of a case: ``world`` a JSON boolean (default false), ``frame`` ``"RAS"`` or ``"LPS"``
    (default RAS) and only with ``"world": true``; a ``ValueError`` naming ``where``, ``case`` and the key."""
    world = raw.get("world", False)
    if not isinstance(world, bool):  # a bad value in the user's file: a ValueError, as every input check here
        raise ValueError(  # noqa: TRY004
            f'{where}: case {case!r}: "world" must be JSON true or false, got {_json_repr(world)}.'
        )
    frame = raw.get("frame", "RAS")
    if not isinstance(frame, str) or frame.upper() not in WORLD_FRAMES:
        raise ValueError(
            f'{where}: case {case!r}: "frame" must be one of {", ".join(map(repr, WORLD_FRAMES))}, got '
            f"{_json_repr(frame)}."
        )
    if "frame" in raw and not world:
        raise ValueError(
            f'{where}: case {case!r}: "frame" only applies with "world": true (the centre is voxel coordinates '
            "otherwise)."
        )
    return world, frame.upper()


def _case_entry(raw: Any, image: str, where: str, allowed: Sequence[str] = CASE_KEYS) -> dict[str, Any]:
    """One case of a centers file, checked: ``{"center", "world", "frame"(, "case_id")}``.

    Args:
        raw: the case's value: ``[x, y(, z)]`` or ``{"center": [...], "world": bool, "frame": str, "case_id": str}``.
        image: the case's image path as written in the file (names the case in messages).
        where: the file (names it in messages).
        allowed: the keys a dict case may have.

    Raises:
        ValueError: an unknown key, a missing or malformed ``center`` (not 2 or 3 finite numbers; booleans are no
            numbers), a ``world`` that is not a JSON boolean, a ``frame`` other than RAS / LPS or without
            ``"world": true``, a ``case_id`` that is not a non-empty string or an integer.
    """
    if not isinstance(raw, Mapping):
        return {"center": _check_center(raw, where, image), "world": False, "frame": "RAS"}
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ValueError(
            f"{where}: case {image!r}: unknown key {unknown[0]!r}; a case takes {', '.join(map(repr, allowed))}."
        )
    if "center" not in raw:
        raise ValueError(f'{where}: case {image!r}: no "center" (a list of 2 or 3 numbers).')
    world, frame = _check_world_frame(raw, where, image)
    entry = {"center": _check_center(raw["center"], where, image), "world": world, "frame": frame}
    if "case_id" in raw:
        cid = raw["case_id"]
        if isinstance(cid, bool) or not isinstance(cid, (str, int)) or cid == "":
            raise ValueError(
                f'{where}: case {image!r}: "case_id" must be a non-empty string, got {_json_repr(cid)}.'
            )
        entry["case_id"] = str(cid)
    return entry


def read_inference_cases(
    dataset_dir: str | os.PathLike, centers: str | os.PathLike | None = None, split: str = "test"
) -> list[dict[str, Any]]:
    """The images to run on and their lesion centres.

    Sources, in this order:

    1. ``centers`` (or ``<dataset_dir>/centers.json``): a dict ``{image: center}`` where ``image`` is a path
       relative to ``dataset_dir`` (or absolute) and ``center`` is ``[x, y(, z)]`` voxel coordinates or
       ``{"center": [...], "world": true, "frame": "LPS"|"RAS", "case_id": "..."}``; or a list of
       ``{"image", "center", ...}``. Every case is checked before any is run (:func:`_case_entry`): unknown keys,
       a ``center`` that is not 2 or 3 finite numbers, a ``world`` that is not a JSON boolean, a ``frame`` other
       than RAS / LPS or without ``"world": true`` are refused.
    2. ``<dataset_dir>/datalist.json`` (the project's on-disk format): the entries of ``split``; an entry's
       ``center`` if it has one, else the image's centre voxel (the built-in data are lesion-centred crops); its
       ``center`` / ``world`` / ``frame`` are checked as above (other keys are the dataset's own).

    Returns:
        list of dict: ``{"image": absolute path, "center": list | None, "world": bool, "frame": str, "case_id": str}``
            (``center`` None = the image centre).

    Raises:
        FileNotFoundError: the folder does not exist, or holds neither file.
        ValueError: a malformed file or case, naming the file, the case and the key.
    """
    root = Path(dataset_dir)
    cpath = Path(centers) if centers is not None else root / "centers.json"
    cases: list[dict[str, Any]] = []

    def _abs(p: str) -> str:
        q = Path(p)
        return str(q if q.is_absolute() else root / q)

    def _case_id(p: str) -> str:
        name = Path(p.rstrip("/")).name
        for ext in (".nii.gz", ".nii", ".dcm"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name

    if centers is not None or cpath.is_file():
        if not cpath.is_file():
            raise FileNotFoundError(f"centers file {cpath} does not exist.")
        data = read_json(cpath, "centers file")
        if not isinstance(data, (Mapping, list)) or (
            isinstance(data, list) and not all(isinstance(d, Mapping) for d in data)
        ):
            raise ValueError(
                f"centers file {cpath} must hold {{image: center}} or a list of {{image, center}} objects."
            )
        if isinstance(data, Mapping):
            items, allowed = [(image, raw, f"{image!r}") for image, raw in data.items()], CASE_KEYS
        else:
            items = [(d.get("image"), d, f"entry {k}") for k, d in enumerate(data)]
            allowed = ("image", *CASE_KEYS)
        for image, raw, name in items:  # every case is checked before any is run
            if not image or not isinstance(image, str):
                raise ValueError(f'{cpath}: case {name}: "image" must be a non-empty path, got {_json_repr(image)}.')
            entry = _case_entry(raw, image, str(cpath), allowed)
            cases.append({"image": _abs(image), "case_id": entry.pop("case_id", _case_id(image)), **entry})
    else:
        dl = root / "datalist.json"
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise FileNotFoundError(f"{root} {what}: give the folder holding the images and centers.json.")
        if not dl.is_file():
            raise FileNotFoundError(f"{root} holds neither centers.json nor datalist.json (images + lesion centres).")
        data = read_json(dl)
        entries = data.get(split) if isinstance(data, Mapping) else data
        if not isinstance(entries, list):
            raise ValueError(f"{dl} has no list of entries under {split!r}.")
        for k, e in enumerate(entries):
            image = e.get("image") if isinstance(e, Mapping) else e
            if not isinstance(image, str) or not image:
                raise ValueError(f"{dl}: entry {k} of {split!r} has no 'image' path.")
            e = e if isinstance(e, Mapping) else {}
            where = f"{dl} ({split!r})"
            center = e.get("center")  # None: the image centre
            world, frame = _check_world_frame(e, where, image)
            if center is None and world:
                raise ValueError(f'{where}: case {image!r}: "world": true needs a "center".')
            cid = e.get("case_id", _case_id(image))
            if isinstance(cid, bool) or not isinstance(cid, (str, int)) or cid == "":
                raise ValueError(
                    f'{where}: case {image!r}: "case_id" must be a non-empty string, got {_json_repr(cid)}.'
                )
            cases.append(
                {
                    "image": _abs(image),
                    "center": None if center is None else _check_center(center, where, image),
                    "world": world,
                    "frame": frame,
                    "case_id": str(cid),
                }
            )
    if not cases:
        raise ValueError(f"{cpath if cpath.is_file() else root / 'datalist.json'} lists no images.")
    seen: dict[str, int] = {}
    for c in cases:  # unique output folder names
        n = seen.get(c["case_id"], 0)
        seen[c["case_id"]] = n + 1
        if n:
            c["case_id"] = f"{c['case_id']}_{n}"
    return cases


def infer_cases(
    model: nn.Module,
    cases: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    spacing: float | Sequence[float],
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    num_samples: int = 16,
    seed: int = 0,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    threshold: PresenceThreshold | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_non_ct: bool = False,
    checkpoint: str | None = None,
    three_d: bool = False,
    max_extent_mm: float = 40.0,
    pieces: tuple[Any, HypothesesInferer, Any] | None = None,
) -> dict[str, Any]:
    """Run many images through the inference pieces with one loaded model and write the whole run at once.

    The run is the bundle's ``evaluator`` (MONAI's ``SupervisedEvaluator``,
    :func:`~monai_probunet.inference_evaluator.inference_evaluator`): one case per iteration.

    Every case goes to ``<output_dir>/<case_id>/`` (:meth:`~monai_probunet.hypotheses.Hypotheses.write_set`), plus
    ``<output_dir>/inference_summary.json``; the run is written into a temporary sibling folder and moved onto
    ``output_dir`` at the end (an earlier run there is replaced as a whole, a folder holding anything else is
    refused before any work: :class:`~monai_probunet.io_utils.staged_dir`). A case that fails (bad image, centre
    outside, ...) is recorded with its error and the run goes on.

    Args:
        model: a network with ``sample`` (:func:`~monai_probunet.model_loading.load_model`).
        cases: ``{"image", "center" (None = image centre), "world", "frame", "case_id"}`` entries
            (:func:`read_inference_cases`).
        output_dir: the run's folder.
        spacing, roi_size, num_samples, seed, hu_window, device, allow_non_ct: as in
            :func:`~monai_probunet.predict.predict_hypotheses`.
        threshold: the fitted presence rule, ``None`` for the fallback rule.
        progress: show a tqdm bar.
        checkpoint: recorded in the summary.
        three_d: follow each lesion through the slices of its volume
            (:func:`~monai_probunet.predict3d.predict_hypotheses_3d`; a 2-D image is then a failed case).
        max_extent_mm: with ``three_d``: the largest lesion extent along the slice axis.
        pieces: ``(preprocessing, inferer, postprocessing)`` of the bundle config
            (:mod:`~monai_probunet.inference_transforms`), run on each 2-D case and on every slice of a 3-D case;
            ``None``: the same pieces built from the arguments above (those of
            :func:`~monai_probunet.predict.predict_hypotheses`).

    Returns:
        The summary (``{"cases": [{case_id, image, presence_probability, ambiguous, num_variants, ...} | {case_id,
        image, error}], "num_ok", "num_failed", "ambiguity_rule", ...}``).
    """
    if spacing is None:
        raise ValueError(f"spacing is required: {SPACING_HINT}.")
    if pieces is None:
        pieces = (
            inference_preprocessing(spacing, roi_size=roi_size, hu_window=hu_window, num_samples=num_samples,
                                    allow_non_ct=allow_non_ct),
            HypothesesInferer(num_samples=num_samples, seed=seed),
            inference_postprocessing(threshold),
        )
    preprocessing, inferer, postprocessing = pieces
    evaluator = inference_evaluator(
        model, cases, output_dir, preprocessing=preprocessing, inferer=inferer, postprocessing=postprocessing,
        device=device, threshold=threshold, three_d=three_d, max_extent_mm=max_extent_mm, spacing=spacing,
        roi_size=roi_size, hu_window=hu_window, allow_non_ct=allow_non_ct, checkpoint=checkpoint, progress=progress,
    )
    evaluator.run()
    return evaluator.state.inference_summary


def run_inference(
    network: nn.Module,
    ckpt_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    centers: str | os.PathLike | None = None,
    split: str = "test",
    num_samples: int = 16,
    seed: int = 0,
    spacing: float | Sequence[float] | None = None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    threshold_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_non_ct: bool = False,
    infer_3d: bool = False,
    max_extent_mm: float = 40.0,
    preprocessing: Any = None,
    inferer: HypothesesInferer | None = None,
    postprocessing: Any = None,
    evaluator: Any = None,
    raise_on_failure: bool = False,
) -> dict[str, Any]:
    """Run the inference pieces on every image of a folder, the model loaded once (bundle id ``inferring``).

    Checks the inputs first (spacing, device, cases, output folder, threshold), then loads ``ckpt_path`` into
    ``network`` (``weights_only=True``); the presence threshold comes from ``threshold_path`` or
    ``presence_threshold.json`` next to the checkpoint (else the fallback rule). Cases come from
    :func:`read_inference_cases`; the run is written by :func:`infer_cases` (all at once, per-case errors
    recorded in ``<output_dir>/inference_summary.json``); when a case failed and ``raise_on_failure``, it then raises
    :class:`FailedCasesError` (the bundle command's exit status 2). With ``infer_3d`` each lesion is followed through
    the slices of its volume (:func:`~monai_probunet.predict3d.predict_hypotheses_3d`, at most ``max_extent_mm``).

    Args:
        network: the network (``network_def``), its weights loaded from ``ckpt_path``.
        ckpt_path: ``model.pt``.
        dataset_dir, centers, split: where the cases come from (:func:`read_inference_cases`).
        output_dir: the run's folder.
        num_samples, seed, spacing, roi_size, hu_window, device, allow_non_ct: as in
            :func:`~monai_probunet.predict.predict_hypotheses`.
        threshold_path: ``presence_threshold.json`` (default: next to the checkpoint, else the fallback rule).
        progress: show a tqdm bar.
        infer_3d, max_extent_mm: follow each lesion through its volume (:func:`infer_cases`' ``three_d``).
        preprocessing, inferer, postprocessing: the bundle's pieces (ids ``preprocessing``, ``inferer``,
            ``postprocessing``), run on each 2-D case and every slice of a 3-D case; all ``None``: the same pieces
            built from the arguments.
        evaluator: the bundle's ``evaluator`` (a ``SupervisedEvaluator`` over the cases with the pieces and a
            :class:`~monai_probunet.inference_evaluator.HypothesesWriter`; its ``network`` is ``network``): the
            run is its ``run()`` after the checks and the weights; ``dataset_dir``, ``centers``, ``split`` and the
            pieces are then its own. ``None``: :func:`infer_cases` builds the same evaluator.
        raise_on_failure: after the run, raise :class:`FailedCasesError` if any case failed (the good ones are
            written first; the bundle command, ``inference.yaml``, then ends with one line and exit status 2); else
            return the summary with the failed cases in it.

    Returns:
        dict: The summary.

    Raises:
        ConfigValueError: a bad option value, missing cases, a foreign output folder or an unreadable checkpoint
            (one line from the bundle command).
        FailedCasesError: after the run, with ``raise_on_failure``, when a case failed (the good ones are written;
            the summary is its ``summary``): the bundle command prints one line and exits with status 2.
    """
    from .bundle_utils import ConfigValueError
    from .io_utils import load_network_weights, staged_dir

    try:  # the bundle command prints these as one line (exit status 2): every one is about an option's value
        if spacing is None:
            raise ValueError(f"spacing is required: {SPACING_HINT}.")
        _pair(spacing, "infer_spacing", float)
        if infer_3d and not (isinstance(max_extent_mm, (int, float)) and not isinstance(max_extent_mm, bool)
                             and 0 < float(max_extent_mm) < float("inf")):
            raise ValueError(f"infer_max_extent_mm must be a positive number, got {max_extent_mm!r}.")
        dev = check_device(device)
        if evaluator is not None and evaluator.network is not network:
            raise ValueError("the evaluator's network is not the network whose weights are loaded (network_def).")
        cases = evaluator.data_loader if evaluator is not None else read_inference_cases(dataset_dir, centers, split)
        staged_dir(output_dir, is_ours=is_inference_run, what="output_dir")  # refuse early, before any work
        thr = resolve_threshold(threshold_path, ckpt_path)
        pieces = (preprocessing, inferer, postprocessing)
        if any(p is not None for p in pieces) and any(p is None for p in pieces):
            raise ValueError("preprocessing, inferer and postprocessing are given together or not at all.")
        load_network_weights(network, ckpt_path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigValueError(str(e)) from e
    network = network.to(dev).eval()
    if thr is None:
        warnings.warn(f"no presence_threshold.json next to {ckpt_path}: {FALLBACK_RULE}.", UserWarning, stacklevel=2)
    if evaluator is not None:
        evaluator.run()
        summary = evaluator.state.inference_summary
    else:
        summary = infer_cases(
            network, cases, output_dir, spacing=spacing, roi_size=roi_size, num_samples=num_samples, seed=seed,
            hu_window=hu_window, threshold=thr, device=dev, progress=progress, allow_non_ct=allow_non_ct,
            checkpoint=str(ckpt_path), three_d=bool(infer_3d), max_extent_mm=max_extent_mm,
            pieces=None if preprocessing is None else pieces,
        )
    if raise_on_failure and summary["num_failed"]:
        raise FailedCasesError(summary, output_dir)
    return summary


def resolve_threshold(
    threshold_path: str | os.PathLike | None, ckpt_path: str | os.PathLike
) -> PresenceThreshold | None:
    """The presence rule of a run: ``threshold_path`` if given, else ``presence_threshold.json`` next to the checkpoint.

    Args:
        threshold_path: a ``presence_threshold.json`` (``None`` or empty: look next to ``ckpt_path``).
        ckpt_path: the checkpoint.

    Returns:
        The fitted rule, or ``None`` (the fallback rule) when there is none.

    Raises:
        ConfigValueError: the file is missing or not a presence threshold (one line from the bundle command).
    """
    from .bundle_utils import ConfigValueError

    try:
        return _as_threshold(threshold_path) if threshold_path else find_presence_threshold(ckpt_path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigValueError(str(e)) from e
