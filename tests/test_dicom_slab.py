"""Of a DICOM series, only the slices a click needs are read, on the whole series' grid: the same volume where it
was read, the same affine and metadata, the same answers and files as a whole read gives; other files' pixels are
not read."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.valuerep import DS

from monai_probunet.ct_io import load_ct, resolve_center
from monai_probunet.dicom_slab import ReadNear
from tests.conftest import make_ct_series

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "bundle" / "models" / "model.pt"
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"


def write_series(folder: Path, slices: int, gap: float, iop: list[float], descending: bool = False,
                 jitter: float = 0.0, seed: int = 0) -> list[Path]:
    """CT_small.dcm's header, noise pixels, ``slices`` files along the normal of ``iop`` every ``gap`` mm (each
    position moved by up to ``jitter`` of the gap), numbered along the normal or against it."""
    rng = np.random.default_rng(seed)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    iop_ = np.asarray(iop, dtype=np.float64)
    normal = np.cross(iop_[:3], iop_[3:])
    folder.mkdir(parents=True)
    paths = []
    for k in range(slices):
        ds = src.copy()
        ds.PixelData = rng.integers(0, 2000, src.pixel_array.shape).astype(src.pixel_array.dtype).tobytes()
        position = np.array([-80.0, -60.0, 30.0]) + (k + rng.uniform(-jitter, jitter)) * gap * normal
        ds.ImagePositionPatient = [DS(float(v), auto_format=True) for v in position]
        ds.ImageOrientationPatient = [DS(float(v), auto_format=True) for v in iop_]
        ds.InstanceNumber = slices - k if descending else k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        path = folder / f"f{rng.permutation(10**6)[0]:06d}_{k:03d}.dcm"  # names in no slice order
        ds.save_as(str(path))
        paths.append(path)
    return paths


AXIAL = [1, 0, 0, 0, 1, 0]
TURNED = [float(np.cos(0.3)), float(np.sin(0.3)), 0, -float(np.sin(0.3)), float(np.cos(0.3)), 0]  # about S
TILTED = [1, 0, 0, 0, float(np.cos(0.35)), -float(np.sin(0.35))]  # a gantry tilt: its normal still nearest S


@pytest.mark.parametrize(
    "iop, descending, jitter", [(AXIAL, False, 0.0), (AXIAL, True, 0.0), (TURNED, True, 0.004), (TILTED, False, 0.004)]
)
def test_a_slab_is_the_whole_read_where_it_was_read(tmp_path, iop, descending, jitter):
    folder = tmp_path / "series"
    write_series(folder, 40, 1.25, iop, descending, jitter)
    whole, _ = load_ct(folder)
    shape = tuple(whole.shape)
    corner = resolve_center(whole, [60, 70, 21], world=False)[1]  # a voxel's RAS position
    nears = [
        (ReadNear([64, 64, 0]), 0), (ReadNear([64, 64, 17.4]), 17), (ReadNear([64, 64, 39]), 39),
        (ReadNear(corner, world=True), 21), (ReadNear(corner * [-1, -1, 1], world=True, frame="LPS"), 21),
        (ReadNear([64, 64, 20], mm_each_side=5.0), 20),
    ]
    for near, k in nears:
        part, _ = load_ct(folder, near=near)
        assert tuple(part.shape) == shape and part.dtype == whole.dtype
        assert torch.equal(part.affine, whole.affine)
        assert np.array_equal(part.meta["original_affine"], whole.meta["original_affine"])
        assert tuple(part.meta["spatial_shape"]) == tuple(whole.meta["spatial_shape"])
        read = [j for j in range(shape[-1]) if bool(part[..., j].any())]
        reach = int(np.ceil(near.mm_each_side / 1.25)) + 1
        assert k in read and read == list(range(read[0], read[-1] + 1)) and len(read) <= 2 * reach + 1, read
        assert torch.equal(part[..., read], whole[..., read])
        assert part.as_tensor()[..., read[0]].is_contiguous()  # a slice per block: the zeros take no memory
        if near.world:
            assert np.array_equal(resolve_center(part, near.center, world=True, frame=near.frame)[0],
                                  resolve_center(whole, near.center, world=True, frame=near.frame)[0])


def test_a_coronal_series_and_a_click_outside_are_read_whole(tmp_path):
    """A coronal series' axial plane crosses every file: all are read. A click beyond the series is refused as a
    whole read refuses it."""
    coronal = tmp_path / "coronal"
    write_series(coronal, 12, 2.0, [1, 0, 0, 0, 0, -1])
    whole, _ = load_ct(coronal)
    part, _ = load_ct(coronal, near=ReadNear([10, 10, 5]))
    assert torch.equal(part.as_tensor(), whole.as_tensor()) and torch.equal(part.affine, whole.affine)

    axial = tmp_path / "axial"
    write_series(axial, 30, 1.0, AXIAL)
    whole, _ = load_ct(axial)
    beyond = resolve_center(whole, [64, 64, 29], world=False)[1] + [0, 0, 5.0]  # 5 slices above the last
    errors = []
    for img in (whole, load_ct(axial, near=ReadNear(beyond, world=True))[0]):
        with pytest.raises(ValueError, match="outside the image") as e:
            resolve_center(img, beyond, world=True, source="s")
        errors.append(str(e.value))
    assert errors[0] == errors[1]


@pytest.fixture(scope="module")
def lesion_series(tmp_path_factory) -> list[Path]:
    """40 slices of 1.25 mm with a lesion of 5 mm radius on the middle ones (slices 10-29)."""
    return make_ct_series(tmp_path_factory.mktemp("ct") / "series", slices=40, thickness=1.25, radius_mm=5.0, seed=3)


@pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} does not exist (train the bundle)")
@pytest.mark.parametrize("three_d", [False, True])
def test_the_cli_reads_the_slab_and_answers_as_from_the_whole_series(lesion_series, tmp_path, monkeypatch, three_d):
    """The CLI on the series folder reads the pixels of the slab's files only (its picture's included) and writes
    the files a whole read gives (the library on the whole volume, loaded beforehand), and the same picture."""
    from PIL import Image

    from monai_probunet.hypotheses import OVERVIEW_NAME, PRESENCE_LABEL_NAME, REPORT_NAME
    from monai_probunet.infer import main as cli_main
    from monai_probunet.model_loading import find_presence_threshold, load_model
    from monai_probunet.overview import result_overview
    from monai_probunet.predict import predict_hypotheses
    from monai_probunet.predict3d import predict_hypotheses_3d

    folder, center = lesion_series[0].parent, [56, 64, 20]  # make_series: the lesion at row 64, column 56
    pixel_reads: list[str] = []
    real = pydicom.dcmread

    def counted(fp, *args, **kwargs):
        if not kwargs.get("stop_before_pixels", False):
            pixel_reads.append(Path(str(fp)).name)
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    out = tmp_path / "cli"
    extent = ["--3d", "--max-extent-mm", "10"] if three_d else []
    assert cli_main([str(folder), "--center", *map(str, center), "--ckpt", str(MODEL), "--config", str(TRAIN_YAML),
                     "--out", str(out), "--no-dicom-seg", "--png", *extent]) == 0
    reach = (int(np.ceil(10 / 1.25)) if three_d else 0) + 1
    assert sorted(set(pixel_reads)) == [f"slice_{k:03d}.dcm" for k in range(20 - reach, 21 + reach)]
    assert all(pixel_reads.count(name) <= 2 for name in pixel_reads)  # the picture reads those it shows again
    monkeypatch.setattr(pydicom, "dcmread", real)

    whole, _ = load_ct(folder)
    model, settings = load_model(MODEL, TRAIN_YAML)
    args = {"spacing": settings["spacing"], "roi_size": settings["roi_size"], "hu_window": settings["hu_window"],
            "threshold": find_presence_threshold(MODEL)}  # the CLI's presence rule
    if three_d:
        hyp = predict_hypotheses_3d(whole, center, model, max_extent_mm=10, **args)
    else:
        hyp = predict_hypotheses(whole, center, model, **args)
    hyp.save(tmp_path / "whole")
    files = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(files) == 5 and files == sorted(p.name for p in (tmp_path / "whole").glob("*.nii.gz"))
    for name in files:
        a, b = nib.load(out / name), nib.load(tmp_path / "whole" / name)
        assert np.array_equal(a.affine, b.affine) and np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert nib.load(out / "hypotheses.nii.gz").get_fdata().any()  # a lesion was drawn: a real comparison
    # the CLI's picture against the same result drawn on the whole series: the same pixels but where an outline's
    # anti-aliasing differs by a level from one drawing to the next; a slice not read would differ everywhere on it
    labels = np.moveaxis(np.asarray(nib.load(out / "hypotheses.nii.gz").dataobj), -1, 0)  # S x the series' grid
    label = np.asarray(nib.load(out / PRESENCE_LABEL_NAME).dataobj)
    report = json.loads((out / REPORT_NAME).read_text())
    result_overview(np.asarray(whole.array)[0], report, labels, label, tmp_path / "whole.png", settings["hu_window"])
    cli_png, whole_png = (np.asarray(Image.open(p), dtype=int) for p in (out / OVERVIEW_NAME, tmp_path / "whole.png"))
    assert cli_png.shape == whole_png.shape
    differ = np.abs(cli_png - whole_png).max(axis=-1)
    assert differ.max() <= 3 and np.count_nonzero(differ) < 200, (differ.max(), np.count_nonzero(differ))
