"""The ``uncertainty`` active-learning strategy: the unlabelled image whose hypotheses disagree most comes next.

For every unlabelled image of the datastore it is given (for a rater's *Next Sample*: the images that rater may
outline next, :meth:`lib.rater_datastore.RaterDatastore.for_rater`), the ``probunet`` task's model draws
``num_samples`` hypotheses at the image's lesion centre and
:func:`monai_probunet.metrics.disagreement.hypothesis_disagreement` scores them (presence ambiguity and the mean
pairwise 1 - IoU of the lesion-containing hypotheses). The centre is the image's ``center``
info (IJK voxel indices, as a click: ``[i, j]`` on a slice, ``[i, j, k]`` on a volume; set it with
``PUT /datastore/image/info?image=ID -F 'info={"center": [i, j, k]}'``)
or else the centre voxel of the image grid (images that are candidate crops centred on a finding); the reply says
which (``center_source``). Scores are cached per image and model file (its modification time). Request::

    curl -X POST http://127.0.0.1:8000/activelearning/uncertainty -H 'Content-Type: application/json' \
        -d '{"num_samples": 16, "seed": 0}'

The reply: the chosen image ``id``, its ``score``, ``center``, ``center_source``, ``ranking`` (every scored
image, highest score first), ``not_scored`` (``[{"id", "reason"}]``: the unlabelled images that could not be
scored, e.g. not CT or a ``center`` info that does not fit the image, which the ranking therefore never offers) and
``not_yet_scored`` (ids). One request scores at most ``max_images`` images not scored before (request key, default
64; in id order): a large datastore (a PACS behind DICOMweb, where scoring a series first downloads it) is ranked
over several requests instead of one that runs for hours, each answering with the best image scored so far.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.infers.params import MAX_SAMPLES, parse_int
from monai_probunet.inference import load_ct, predict_hypotheses
from monai_probunet.metrics.disagreement import hypothesis_disagreement, presence_ambiguity, shape_disagreement

logger = logging.getLogger(__name__)

__all__ = ["Uncertainty"]


class Uncertainty(Strategy):
    """Rank unlabelled images by the disagreement of the model's hypotheses (module docstring).

    Args:
        infer_task: the ``probunet`` infer task (its model, settings and presence threshold are used).
        num_samples: hypotheses per image (request key ``num_samples``).
        seed: sampling seed (request key ``seed``).
        max_images: images not scored before that one request scores at most (request key ``max_images``).
    """

    def __init__(self, infer_task: Any, num_samples: int = 16, seed: int = 0, max_images: int = 64) -> None:
        super().__init__("Probabilistic U-Net hypothesis disagreement (presence ambiguity, pairwise 1 - IoU)")
        self.task = infer_task
        self.num_samples = num_samples
        self.seed = seed
        self.max_images = max_images
        # per (image, model file time, num_samples, seed, centre info and image time): its score, or why it cannot
        # be scored
        self._cache: dict[tuple[str, float, int, int, str], dict[str, Any]] = {}
        self._failed: dict[tuple[str, float, int, int, str], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _center(info: dict[str, Any], shape: tuple[int, ...]) -> tuple[list[float], str]:
        center = info.get("center")
        if center is not None:
            if not isinstance(center, list) or len(center) not in (2, 3) or not all(
                    isinstance(c, (int, float)) for c in center):
                raise HTTPException(status_code=400, detail=f"image info 'center' {center!r}: expected [i, j] or "
                                    "[i, j, k] voxel indices.")
            return [float(c) for c in center], "image info"
        return [float((s - 1) // 2) for s in shape], "grid centre"

    def score(self, image_path: str, info: dict[str, Any], num_samples: int, seed: int) -> dict[str, Any]:
        """Score one image: ``{"score", "presence_ambiguity", "shape_disagreement", "center", "center_source"}``."""
        from monailabel.utils.others.generic import name_to_device

        device = name_to_device("cuda")
        network, settings, threshold = self.task._model(device)
        image, _ = load_ct(image_path)
        center, source = self._center(info, tuple(image.shape[1:]))  # 1 x *spatial
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            hyp = predict_hypotheses(
                image, center, network, world=False, spacing=settings["spacing"], roi_size=settings["roi_size"],
                num_samples=num_samples, seed=seed, threshold=threshold, hu_window=settings["hu_window"],
                device=device,
            )
        labels = np.asarray(hyp.labels)
        return {"score": round(hypothesis_disagreement(labels), 6),
                "presence_ambiguity": round(presence_ambiguity(labels), 6),
                "shape_disagreement": round(shape_disagreement(labels), 6),
                "center": center, "center_source": source}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        import os

        try:
            num_samples = parse_int(request.get("num_samples", self.num_samples), "num_samples", 2, MAX_SAMPLES)
            seed = parse_int(request.get("seed", self.seed), "seed", 0, 2**63 - 1)
            max_images = parse_int(request.get("max_images", self.max_images), "max_images", 1, 1_000_000)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        images = sorted(datastore.get_unlabeled_images())
        if not images:
            return None
        model = self.task.model_file
        mtime = os.stat(model).st_mtime if model and os.path.isfile(model) else 0.0
        ranking, failures, waiting = [], [], []

        def key_of(image_id: str, info: dict[str, Any]) -> tuple[str, float, int, int, str]:
            return image_id, mtime, num_samples, seed, repr((info.get("center"), info.get("ts")))  # ts: the file's

        for image_id in images:
            info = datastore.get_image_info(image_id) or {}
            key = key_of(image_id, info)
            with self._lock:
                cached, failed = self._cache.get(key), self._failed.get(key)
            if failed is not None:
                failures.append({"id": image_id, "reason": failed})
                continue
            if cached is None:
                if max_images == 0:
                    waiting.append(image_id)
                    continue
                max_images -= 1
                try:
                    path = datastore.get_image_uri(image_id)
                    key = key_of(image_id, datastore.get_image_info(image_id) or {})  # a download adds its time
                    cached = self.score(path, info, num_samples, seed)
                except HTTPException:
                    raise
                except Exception as e:  # noqa: BLE001 -- one unreadable image must not stop the ranking
                    msg = getattr(e, "msg", None) or f"{type(e).__name__}: {e}"
                    logger.warning(f"uncertainty: image {image_id} not scored: {msg}")
                    if getattr(e, "status", None) == 503:  # no model file: nothing can be scored
                        raise HTTPException(status_code=503, detail=msg) from None
                    failures.append({"id": image_id, "reason": msg})
                    with self._lock:
                        self._failed[key] = msg
                    continue
                with self._lock:
                    self._cache[key] = cached
            ranking.append({"id": image_id, **cached})
        if not ranking:  # where some are not scored yet, the next request goes on with them
            first = failures[0]
            later = f"; {len(waiting)} more are not scored yet: ask again" if waiting else ""
            raise HTTPException(status_code=422, detail=f"none of the {len(images) - len(waiting)} unlabelled images "
                                f"tried could be scored (first: {first['id']}: {first['reason']}){later}.")
        ranking.sort(key=lambda r: (-r["score"], r["id"]))
        best = ranking[0]
        logger.info(f"uncertainty: next {best['id']} score {best['score']} of {len(ranking)} images"
                    + (f"; {len(waiting)} not scored yet" if waiting else ""))
        return {**best, "ranking": [{"id": r["id"], "score": r["score"]} for r in ranking], "not_scored": failures,
                "not_yet_scored": waiting}
