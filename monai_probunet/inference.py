"""Inference on a CT image: S segmentation hypotheses of the lesion at a given centre, on the input's own grid.

:func:`predict_hypotheses` is the library entry point (the CLI :mod:`monai_probunet.infer`, the bundle run id
``inferring`` and the MONAI Label app all call it):

1. **load** a 2-D CT slice (NIfTI, or one DICOM file) or a 3-D CT volume (NIfTI, or a DICOM series folder) with
   MONAI's ``LoadImage`` (``PydicomReader`` for DICOM: rescale slope/intercept applied, i.e. HU), or take an already
   loaded channel-first ``MetaTensor``; DICOM must have ``Modality == "CT"``;
2. **centre**: the lesion centre in voxel coordinates of the loaded array, or in world coordinates (``world=True``,
   millimetres, ``frame="RAS"`` or ``"LPS"``);
3. for a 3-D volume take the **axial slice through the centre** (the array axis most aligned with the world S axis);
4. window HU to ``[0, 1]`` (``ScaleIntensityRange`` with clipping, as in training), **resample in-plane** to the
   model's spacing (``Spacingd``, bilinear; the slice axis is kept), pad by the ROI (``SpatialPadd``, value 0 =
   air) and **crop** ``roi_size`` around the centre (``SpatialCropd``); the crop keeps the loaded array's axis
   order (no reorientation: for DICOM that is ``(column, row)``, the transpose of the LIDC crops' ``(row, col)``,
   which train.yaml's flips + 90-degree rotations cover);
5. draw S **hypotheses** with ``model.sample(image, S, generator)`` from a generator seeded with ``seed`` (same seed,
   same output);
6. **map back** onto the input's grid and geometry by inverting crop, pad and resampling with MONAI's ``Invertd``
   (nearest neighbour for the label maps, linear for the probability and entropy maps); for a volume the result
   is written into the centre slice of an otherwise empty volume. Outside the ROI: label 0, probability 0,
   entropy 0.

Coordinates
-----------
*Voxel* coordinates index the array as MONAI loads it (spatial axes after the channel): for NIfTI ``(i, j[, k])`` as
stored in the file; for DICOM ``(column, row[, slice])`` (MONAI's ``PydicomReader`` returns ``pixel_array.T``; a
series is stacked by slice position). Fractional values are allowed.
*World* coordinates are millimetres in the patient frame: ``frame="RAS"`` (NIfTI / MONAI: +x towards the patient's
right, +y anterior, +z superior) or ``frame="LPS"`` (DICOM, e.g. ``ImagePositionPatient`` and what DICOM viewers show:
+x left, +y posterior, +z superior); ``(x, y, z)_RAS = (-x, -y, z)_LPS``. The loaded MetaTensor's affine maps voxels to
RAS (MONAI converts DICOM's LPS geometry on load) and the saved NIfTI files carry that RAS affine. For a 2-D image a
world centre may have 2 components (in-plane x, y; z is taken from the image plane) or 3.

The lesion-presence probability is the fraction of the S hypotheses with any lesion pixel. The "ambiguous" flag
(paper Appendix E: graders would disagree on presence) comes from the fitted :class:`PresenceThreshold`
(``presence_threshold.json`` next to the checkpoint: the shipped one, or one the evaluation run wrote there when
asked with ``--save_presence_threshold_to``); without one the :data:`FALLBACK_RULE` is used and a warning is issued.

Refused with a ``ValueError`` naming the file (never guessed): a model spacing that is not given, an image smaller
than the model's field at that spacing, a zero or negative voxel spacing, intensities that are not plausibly HU in
an image without a DICOM modality (``allow_non_ct`` turns that into a warning). Outputs are written all or nothing
(:meth:`Hypotheses.save`, :func:`infer_cases`).

Where the pieces live (this module re-exports them, so ``from monai_probunet.inference import X`` is the stable
path): :mod:`~monai_probunet.ct_io` (loading and checks, centre resolution), :mod:`~monai_probunet.predict`
(:func:`predict_hypotheses`), :mod:`~monai_probunet.hypotheses` (the result type, variants, the ambiguity rule),
:mod:`~monai_probunet.inference_transforms` (the chain as MONAI dictionary transforms, the sampling inferer and
the loop that runs them: the bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` ids),
:mod:`~monai_probunet.model_loading` (network + checkpoint, presence threshold next to it) and
:mod:`~monai_probunet.batch_inference` (many images, the bundle's ``inferring`` run).
"""

from __future__ import annotations

from .batch_inference import infer_cases, read_inference_cases, run_inference
from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE, load_ct, resolve_center
from .hypotheses import FALLBACK_RULE, Hypotheses, Variant, group_variants, is_hypotheses_set, is_inference_run
from .model_loading import check_device, find_presence_threshold, load_model
from .predict import predict_hypotheses

__all__ = [
    "DEFAULT_HU_WINDOW",
    "DEFAULT_ROI_SIZE",
    "FALLBACK_RULE",
    "Hypotheses",
    "Variant",
    "check_device",
    "find_presence_threshold",
    "group_variants",
    "infer_cases",
    "is_hypotheses_set",
    "is_inference_run",
    "load_ct",
    "load_model",
    "predict_hypotheses",
    "read_inference_cases",
    "resolve_center",
    "run_inference",
]
