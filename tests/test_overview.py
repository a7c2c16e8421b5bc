"""The inference CLI's picture (``--png``): radiological orientation from the image's affine, written with the set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai_probunet.overview import _shown, display_orientation, pixel_aspect
from tests.conftest import REPO, is_shipped_model

pydicom_data = pytest.importorskip("pydicom.data")


@pytest.mark.parametrize(
    ("directions", "expected"),
    [
        # MONAI's reading of an axial DICOM slice: axis 0 along the DICOM columns (towards the patient's left, RAS -x),
        # axis 1 along the rows (posterior, -y): shown as the DICOM pixel array is, no flip
        ([[-1, 0], [0, -1], [0, 0]], (True, False, False)),
        # a NIfTI in RAS+ (axis 0 towards the right, axis 1 anterior): both flipped
        ([[1, 0], [0, 1], [0, 0]], (True, True, True)),
        # axis 0 along y (anterior), axis 1 along -x: not transposed, rows flipped (anterior up)
        ([[0, -1], [1, 0], [0, 0]], (False, True, False)),
    ],
)
def test_display_orientation_puts_the_patients_right_on_the_left_and_anterior_up(directions, expected):
    assert display_orientation(np.array(directions, dtype=float)) == expected


def test_non_square_pixels_are_shown_at_their_true_shape():
    """A 9 mm x 5 mm rectangle on pixels of 0.9 mm (axis 0) x 0.5 mm (axis 1): 10 x 10 pixels, shown wider than
    tall by 9 : 5 in both array orders."""
    rect = np.ones((10, 10))
    for directions, spacing in [(np.array([[-1.0, 0], [0, -1], [0, 0]]), (0.9, 0.5)),  # axis 0 along x
                                (np.array([[0, -1.0], [-1, 0], [0, 0]]), (0.5, 0.9))]:  # axis 1 along x
        orientation = display_orientation(directions)
        rows, cols = _shown(rect, orientation).shape
        height_mm = rows * pixel_aspect(spacing, orientation)  # in units of a shown pixel's width
        assert cols / height_mm == pytest.approx(9 / 5), (directions, spacing)


def test_cli_writes_the_picture_with_the_set_and_replaces_it(tmp_path, capsys):
    from PIL import Image

    from monai_probunet.hypotheses import is_hypotheses_set
    from monai_probunet.infer import main

    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    out = tmp_path / "out"
    for _ in range(2):  # a rerun replaces the whole set, picture included
        assert main([ct, "--center", "60", "60", "--png", "--out", str(out)]) == 0
        assert f"picture {out / 'overview.png'}" in capsys.readouterr().out
        with Image.open(out / "overview.png") as picture:
            assert picture.format == "PNG" and picture.size[0] > 600
        assert is_hypotheses_set(out)


def test_a_batch_writes_a_picture_in_every_case_folder(tmp_path, capsys):
    from PIL import Image

    from monai_probunet.hypotheses import is_inference_run
    from monai_probunet.infer import main

    (tmp_path / "ct.dcm").write_bytes(Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes())
    (tmp_path / "centers.json").write_text(json.dumps([{"image": "ct.dcm", "center": [60, 60], "case_id": "soft"},
                                                        {"image": "ct.dcm", "center": [8, 28], "case_id": "base"}]))
    out = tmp_path / "out"
    assert main(["--batch", str(tmp_path / "centers.json"), "--png", "--out", str(out)]) == 0
    assert "pictures: overview.png in each of the 2 case folders" in capsys.readouterr().out
    for case in ("soft", "base"):
        with Image.open(out / case / "overview.png") as picture:
            assert picture.format == "PNG" and picture.size[0] > 600
    assert is_inference_run(out)  # a later run may replace it as a whole
    # drawn from the case's files, the same picture as the image run on its own draws from its results in memory
    assert main([str(tmp_path / "ct.dcm"), "--center", "8", "28", "--png", "--out", str(tmp_path / "single")]) == 0
    with Image.open(out / "base" / "overview.png") as batch, Image.open(tmp_path / "single" / "overview.png") as one:
        assert np.array_equal(np.asarray(batch), np.asarray(one))


@pytest.mark.parametrize("orientation", [(t, r, c) for t in (0, 1) for r in (0, 1) for c in (0, 1)])
def test_the_centre_is_marked_where_the_picture_shows_its_pixel(orientation):
    from monai_probunet.overview import _shown, shown_point

    array = np.zeros((7, 11))
    array[2, 9] = 1
    x, y = shown_point((2, 9), array.shape, orientation)
    row, col = np.argwhere(_shown(array, orientation))[0]
    assert (x, y) == (col, row)


@pytest.mark.parametrize("center", [(60, 60), (8, 28)])
def test_the_pictures_title_names_the_label_as_the_dicom_seg_does(center):
    """The title leads with the label's segment name (``no lesion p=0.19 ambiguous``): the picture, ``seg.dcm`` and
    MONAI Label say the same, where the count alone (3 of 16 at the lung base) would read as a lesion."""
    from monai_probunet.inference import find_presence_threshold, load_model, predict_hypotheses
    from monai_probunet.overview import overview_title
    from tests.conftest import TRAIN_YAML

    ckpt = TRAIN_YAML.parent.parent / "models" / "model.pt"
    model, settings = load_model(ckpt, TRAIN_YAML)
    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    hyp = predict_hypotheses(ct, center, model, spacing=settings["spacing"], roi_size=settings["roi_size"],
                             hu_window=settings["hu_window"], threshold=find_presence_threshold(ckpt))
    label, decision = hyp.presence_rule_label()
    assert decision.show_lesion == bool(label.any())
    name = f"{'lesion' if label.any() else 'no lesion'} p={hyp.presence_probability:.2f}"
    assert overview_title(hyp.to_report(), label) == (f"CT_small.dcm: {name}{' ambiguous' if hyp.ambiguous else ''} "
                                                      f"({hyp.presence_count} of 16 hypotheses show a lesion)")


def test_the_slices_of_a_3d_label_the_picture_shows():
    from monai_probunet.overview import label_slices

    label = np.zeros((6, 6, 40), np.uint8)
    assert label_slices(label, 2) == []
    label[2:4, 2:4, 3:6] = 1
    assert label_slices(label, 2) == [2, 3, 4, 5, 6]  # and one beyond each end
    assert label_slices(label, 0) == [1, 2, 3, 4]
    label[:] = 0
    label[1, 1, 0:2] = 1
    assert label_slices(label, 2) == [0, 1, 2]  # within the volume
    label[1, 1, 0:36] = 1
    shown = label_slices(label, 2, max_panels=12)
    assert len(shown) == 12 and shown[0] == 0 and shown[-1] == 36 and shown == sorted(set(shown))


def test_a_3d_picture_adds_the_label_through_its_slices(tmp_path, monkeypatch):
    import nibabel as nib
    from PIL import Image

    from monai_probunet import overview
    from monai_probunet.infer import main
    from tests.test_inference_3d import AFFINE, lung_volume, paint_ellipsoid

    drawn = []  # the titles and slice rows the pictures were drawn with (the real drawing runs)
    draw = overview.hypotheses_overview

    def spy(*args, **kwargs):
        drawn.append((args[7], [name for name, _, _ in args[9]]))
        return draw(*args, **kwargs)

    monkeypatch.setattr(overview, "hypotheses_overview", spy)

    vol = lung_volume()
    mask = paint_ellipsoid(vol, (70.0, 64.0, 11.3), (6.0, 5.0, 7.0))
    nib.save(nib.Nifti1Image(vol, np.asarray(AFFINE)), tmp_path / "ct.nii.gz")
    sizes = {}
    for mode in ("2d", "3d"):
        out = tmp_path / mode
        args = [str(tmp_path / "ct.nii.gz"), "--center", "68", "66", "11", "--png", "--out", str(out)]
        assert main([*args, "--3d"] if mode == "3d" else args) == 0
        with Image.open(out / "overview.png") as picture:
            sizes[mode] = picture.size
    assert sizes["3d"][1] > sizes["2d"][1]  # a row of slices below
    report = json.loads((tmp_path / "3d" / "report.json").read_text())
    label = np.asarray(nib.load(tmp_path / "3d" / "presence_label.nii.gz").dataobj)
    spanned = np.flatnonzero(label.any(axis=(0, 1)))
    if is_shipped_model(REPO / "bundle" / "models" / "model.pt"):  # what the shipped model finds (not a retrained one)
        assert set(spanned) <= set(np.flatnonzero(mask.any(axis=(0, 1))))  # the ellipsoid's slices
    assert report["presence_label"]["volume_mm3"] > 0 and spanned.size >= 3

    # the title states what the files hold: the clicked slice's count, the label's volume and slices
    from monai_probunet.inference import find_presence_threshold, load_model
    from monai_probunet.overview import overview_title
    from monai_probunet.predict3d import predict_hypotheses_3d
    from tests.conftest import TRAIN_YAML

    ckpt = TRAIN_YAML.parent.parent / "models" / "model.pt"
    model, settings = load_model(ckpt, TRAIN_YAML)
    hyp = predict_hypotheses_3d(str(tmp_path / "ct.nii.gz"), [68, 66, 11], model, spacing=settings["spacing"],
                                roi_size=settings["roi_size"], hu_window=settings["hu_window"],
                                threshold=find_presence_threshold(ckpt))
    assert drawn[1][0] == overview_title(hyp.to_report(), hyp.presence_rule_label()[0]) == (
        f"ct.nii.gz: lesion p={report['presence_probability']:.2f}{' ambiguous' if report['ambiguous'] else ''} "
        f"({report['presence_count']} of 16 hypotheses show "
        f"a lesion on the clicked slice 11); the label {report['presence_label']['volume_mm3']:.0f} mm^3 on slices "
        f"{spanned[0]}-{spanned[-1]}"
    )
    assert drawn[0][1] == [] and drawn[1][1][0].startswith(f"slice {spanned[0] - 1}")  # the 3-D picture's row
    assert any(name.startswith("slice 11 (clicked): ") for name in drawn[1][1])
