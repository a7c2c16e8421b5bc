"""The bundle's ``evaluator``: MONAI's ``SupervisedEvaluator`` running the inference pieces over many images.

One iteration is one case (an image and its lesion centre,
:func:`~monai_probunet.batch_inference.inference_cases`). :class:`HypothesesIteration`
(the evaluator's ``iteration_update``) runs the ``preprocessing`` on the case and the evaluator's ``inferer`` on its
model input, then fires ``MODEL_COMPLETED``, on which the evaluator runs its ``postprocessing`` (``Invertd`` back
onto the input grid, presence and variants). In 3-D mode it follows the lesion through the slices of the volume
with the same three pieces (:func:`~monai_probunet.predict3d.predict_hypotheses_3d`), so the evaluator then has no
postprocessing of its own. :class:`HypothesesWriter` (a handler) writes every case's set and the run's summary into
a temporary folder that is moved onto the output folder when the run completes.

A case that fails (a missing file, a centre outside the image, an image smaller than the model's field) is recorded
with its error and the run goes on. That is why the iteration is this project's rather than the evaluator's
default: an exception that leaves an ignite iteration ends the whole run, so the iteration catches a case's error.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.transforms import Compose

from .bundle_utils import ConfigValueError, quiet_user_errors
from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE, load_ct
from .data.progress import ScanProgress
from .hypotheses import FALLBACK_RULE, SUMMARY_NAME, WRITTEN_BY, WRITTEN_BY_KEY, is_inference_run
from .hypotheses_inferer import HypothesesInferer, _apply, _unwrap, apply_inferer
from .metrics import PresenceThreshold
from .predict3d import predict_hypotheses_3d

__all__ = ["CASE_KEY", "HypothesesIteration", "HypothesesWriter", "inference_evaluator"]

logger = logging.getLogger(__name__)

#: where the iteration's output keeps the case it ran
CASE_KEY = "case"


class HypothesesIteration:
    """The inference evaluator's ``iteration_update``: one case through the pieces, its error kept if it fails.

    2-D: ``preprocessing`` (a case without a centre is centred on its image), the evaluator's ``inferer`` on the
    model input (:func:`~monai_probunet.inference_transforms.apply_inferer`), then ``FORWARD_COMPLETED`` and
    ``MODEL_COMPLETED`` (the evaluator's ``postprocessing`` runs on the latter). 3-D: the lesion followed through
    the volume (:func:`~monai_probunet.predict3d.predict_hypotheses_3d`) with ``preprocessing``, the evaluator's
    ``inferer`` and ``postprocessing`` on every slice.

    Args:
        preprocessing: :func:`~monai_probunet.inference_transforms.inference_preprocessing` (the bundle's id).
        postprocessing: 3-D only (the evaluator has none then): the bundle's ``postprocessing``.
        three_d: Follow each lesion through the slices of its volume (a 2-D image is then a failed case).
        max_extent_mm: 3-D: the largest lesion extent along the slice axis.
        spacing, roi_size, threshold, hu_window: 3-D: the settings the pieces were built with (checked against
            them, :func:`~monai_probunet.predict3d.slice_pieces`).
        allow_non_ct: Loading an image to find its centre: warn instead of refusing non-HU intensities.

    Returns (of a call):
        ``engine.state.output``: ``{"case": the case, "hypotheses": Hypotheses, ...}`` or
        ``{"case": the case, "error": the exception}``.
    """

    def __init__(
        self,
        preprocessing: Compose,
        postprocessing: Compose | None = None,
        three_d: bool = False,
        max_extent_mm: float = 40.0,
        spacing: float | Sequence[float] | None = None,
        roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
        threshold: PresenceThreshold | None = None,
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        allow_non_ct: bool = False,
    ) -> None:
        if three_d and postprocessing is None:
            raise ConfigValueError("3-D inference runs the postprocessing on every slice: give it to the iteration.")
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing
        self.three_d = bool(three_d)
        self.max_extent_mm = max_extent_mm
        self.spacing = spacing
        self.roi_size = roi_size
        self.threshold = threshold
        self.hu_window = hu_window
        self.allow_non_ct = bool(allow_non_ct)

    def __call__(self, engine: SupervisedEvaluator, case: Mapping[str, Any]) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                output = self._run(engine, case)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            output = {"error": _unwrap(e) if isinstance(e, RuntimeError) else e}
        output[CASE_KEY] = case
        engine.state.output = output
        return output

    def _run(self, engine: SupervisedEvaluator, case: Mapping[str, Any]) -> dict[str, Any]:
        image: Any = case["image"]
        center = case.get("center")
        if center is None:  # the image's centre voxel (the built-in data are lesion-centred crops)
            image, _ = load_ct(image, allow_non_ct=self.allow_non_ct)
            center = [(s - 1) / 2 for s in image.shape[1:]]
        world, frame = bool(case.get("world", False)), case.get("frame", "RAS")
        device = engine.state.device
        inferer: HypothesesInferer = engine.inferer
        if self.three_d:
            hyp = predict_hypotheses_3d(
                image, center, engine.network, world=world, frame=frame, spacing=self.spacing,
                roi_size=self.roi_size, num_samples=inferer.num_samples, seed=inferer.seed, threshold=self.threshold,
                hu_window=self.hu_window, device=device, allow_non_ct=self.allow_non_ct,
                max_extent_mm=self.max_extent_mm, preprocessing=self.preprocessing, inferer=inferer,
                postprocessing=self.postprocessing,
            )
            return {"hypotheses": hyp}
        data = _apply(self.preprocessing, {"image": image, "center": center, "world": world, "frame": frame})
        engine.state.output = apply_inferer(data, engine.network, inferer, device=device)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # the evaluator's postprocessing
        return engine.state.output


def _safe_case_id(case_id: str) -> str:
    """A case id usable as one folder name (no separators, not ``.``/``..``, not the summary's name)."""
    cid = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(case_id)).strip(".") or "case"
    return cid if cid != SUMMARY_NAME else f"{cid}_case"


class HypothesesWriter:
    """Handler of the inference evaluator: each case's set and the run's summary, the run written all at once.

    Every case goes to ``<output_dir>/<case_id>/`` (:meth:`~monai_probunet.hypotheses.Hypotheses.write_set`), a
    failed case to the summary with its error; ``<output_dir>/inference_summary.json`` at the end. The run is
    written into a temporary sibling folder moved onto ``output_dir`` when the evaluator completes (an earlier run
    there is replaced as a whole, a folder holding anything else is refused when the run starts, an exception
    leaves the previous run in place: :class:`~monai_probunet.io_utils.staged_dir`). The summary is also left in
    ``engine.state.inference_summary``.

    Args:
        output_dir: The run's folder.
        checkpoint: Recorded in the summary.
        num_samples, seed: Recorded in the summary (the inferer's).
        threshold: The fitted presence rule (``None``: the fallback rule), recorded in the summary.
        three_d: 3-D mode: the summary rows get the extent and the presence-rule label's volume.
        progress: Show the progress: a tqdm bar on a terminal, else a log line every 10 s
            (:class:`~monai_probunet.data.progress.ScanProgress`).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        num_samples: int = 16,
        seed: int = 0,
        threshold: PresenceThreshold | None = None,
        three_d: bool = False,
        progress: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.num_samples = num_samples
        self.seed = seed
        self.threshold = threshold
        self.three_d = bool(three_d)
        self.progress = bool(progress)
        self.summary: dict[str, Any] | None = None
        self._stage: Any = None
        self._tmp: Path | None = None
        self._bar: Any = None
        self._rows: list[dict[str, Any]] = []
        self._used: set[str] = set()

    def attach(self, engine: SupervisedEvaluator) -> None:
        from ignite.engine import Events

        quiet_user_errors(engine.logger)  # Ctrl-C and a user's error: the command's one line, not ignite's
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def started(self, engine: SupervisedEvaluator) -> None:
        from .io_utils import staged_dir

        self._rows, self._used, self.summary = [], set(), None
        self._stage = staged_dir(self.output_dir, is_ours=is_inference_run, what="output folder")
        self._tmp = self._stage.__enter__()
        if self.progress:
            self._bar = ScanProgress(engine.state.epoch_length, "inferring", log=logger, unit="image", made="ok",
                                     leave=True)

    def iteration_completed(self, engine: SupervisedEvaluator) -> None:
        output = engine.state.output
        case = output[CASE_KEY]
        cid = _safe_case_id(case["case_id"])
        k, base = 1, cid
        while cid in self._used:
            cid, k = f"{base}_{k}", k + 1
        self._used.add(cid)
        row: dict[str, Any] = {"case_id": cid, "image": str(case["image"])}
        error = output.get("error")
        if error is None:
            try:
                row.update(self._write_case(output["hypotheses"], cid))
            except (ValueError, FileNotFoundError, RuntimeError) as e:
                error = e
        if error is not None:
            logger.error("case %s (%s) failed: %s", cid, case["image"], error)
            row = {"case_id": cid, "image": str(case["image"]), "error": f"{type(error).__name__}: {error}"}
        self._rows.append(row)
        if self._bar is not None:
            self._bar.update(sum("error" not in r for r in self._rows))

    def _write_case(self, hyp: Any, cid: str) -> dict[str, Any]:
        assert self._tmp is not None
        hyp.extra["case_id"] = cid
        (self._tmp / cid).mkdir()
        hyp.write_set(self._tmp / cid)
        row = {
            "presence_probability": hyp.presence_probability,
            "ambiguous": hyp.ambiguous,
            "label": hyp.presence_label_report()["name"],
            "num_variants": len(hyp.variants),
            "top_variant_frequency": hyp.variants[0].frequency,
            "mean_area_mm2": float(np.mean(hyp.areas_mm2)),
            "output_dir": str(self.output_dir / cid),
        }
        if self.three_d:
            rep = hyp.to_report()
            row.update(extent_slices=rep["extent_slices"], extent_mm=rep["extent_mm"],
                       presence_label_volume_mm3=rep["presence_label"]["volume_mm3"])
        return row

    def completed(self, engine: SupervisedEvaluator) -> None:
        assert self._tmp is not None
        rows = self._rows
        summary = {
            WRITTEN_BY_KEY: WRITTEN_BY,
            "checkpoint": self.checkpoint,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "mode": "3d" if self.three_d else "2d",
            "ambiguity_rule": FALLBACK_RULE if self.threshold is None else self.threshold.to_dict(),
            "num_ok": sum("error" not in r for r in rows),
            "num_failed": sum("error" in r for r in rows),
            "cases": rows,
        }
        (self._tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1))
        if self._bar is not None:
            self._bar.close()
        stage, self._stage, self._tmp = self._stage, None, None
        stage.__exit__(None, None, None)
        log = logger.error if rows and not summary["num_ok"] else logger.info
        log("inference: %d ok, %d failed -> %s", summary["num_ok"], summary["num_failed"], self.output_dir)
        self.summary = summary
        engine.state.inference_summary = summary

    def exception_raised(self, engine: SupervisedEvaluator, e: Exception) -> None:
        """Leave the previous run in place, then let the exception end the run (ignite re-raises nothing itself
        once a handler is attached to this event)."""
        if self._bar is not None:
            self._bar.close()
        if self._stage is not None and self._tmp is not None:
            stage, self._stage, self._tmp = self._stage, None, None
            stage.__exit__(type(e), e, e.__traceback__)
        raise e


def inference_evaluator(
    network: torch.nn.Module,
    cases: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    preprocessing: Compose,
    inferer: HypothesesInferer,
    postprocessing: Compose,
    device: str | torch.device = "cpu",
    threshold: PresenceThreshold | None = None,
    three_d: bool = False,
    max_extent_mm: float = 40.0,
    spacing: float | Sequence[float] | None = None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    allow_non_ct: bool = False,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> SupervisedEvaluator:
    """The evaluator the bundle's ``evaluator`` id defines, built in Python (:func:`~monai_probunet.batch_inference.
    infer_cases`).

    Args:
        network: The loaded model (``sample``).
        cases: ``{"image", "center", "world", "frame", "case_id"}``
            (:func:`~monai_probunet.batch_inference.read_inference_cases`).
        output_dir: The run's folder (:class:`HypothesesWriter`).
        preprocessing, inferer, postprocessing: The pieces (:mod:`~monai_probunet.inference_transforms`).
        device: Where the model runs.
        threshold: The presence rule the postprocessing was built with (the summary records it).
        three_d, max_extent_mm, spacing, roi_size, hu_window, allow_non_ct: :class:`HypothesesIteration`.
        checkpoint, progress: :class:`HypothesesWriter`.

    Returns:
        A ``SupervisedEvaluator``; ``run()`` it, the summary is then in ``state.inference_summary``.
    """
    iteration = HypothesesIteration(
        preprocessing, postprocessing=postprocessing if three_d else None, three_d=three_d,
        max_extent_mm=max_extent_mm, spacing=spacing, roi_size=roi_size, threshold=threshold, hu_window=hu_window,
        allow_non_ct=allow_non_ct,
    )
    writer = HypothesesWriter(
        output_dir, checkpoint=checkpoint, num_samples=inferer.num_samples, seed=inferer.seed, threshold=threshold,
        three_d=three_d, progress=progress,
    )
    return SupervisedEvaluator(
        device=torch.device(device), val_data_loader=list(cases), network=network, inferer=inferer,
        postprocessing=None if three_d else postprocessing, iteration_update=iteration, decollate=False,
        val_handlers=[writer],
    )
