"""The inference CLI's picture (``--png``): radiological orientation from the image's affine, written with the set."""

from __future__ import annotations

import numpy as np
import pytest

from monai_probunet.overview import display_orientation

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
    with pytest.raises(SystemExit) as refused:
        main(["--batch", str(tmp_path / "c.json"), "--png", "--out", str(tmp_path / "b")])
    assert refused.value.code == 2 and "--png: --batch writes no picture" in capsys.readouterr().err


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
    from monai_probunet.infer import overview_title
    from monai_probunet.inference import find_presence_threshold, load_model, predict_hypotheses
    from tests.conftest import TRAIN_YAML

    ckpt = TRAIN_YAML.parent.parent / "models" / "model.pt"
    model, settings = load_model(ckpt, TRAIN_YAML)
    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    hyp = predict_hypotheses(ct, center, model, spacing=settings["spacing"], roi_size=settings["roi_size"],
                             hu_window=settings["hu_window"], threshold=find_presence_threshold(ckpt))
    label, decision = hyp.presence_rule_label()
    assert decision.show_lesion == bool(label.any())
    name = f"{'lesion' if label.any() else 'no lesion'} p={hyp.presence_probability:.2f}"
    assert overview_title(hyp) == (f"CT_small.dcm: {name}{' ambiguous' if hyp.ambiguous else ''} "
                                   f"({hyp.presence_count} of 16 hypotheses show a lesion)")
