"""A ``folder`` dataset is refused before training, one line per problem, where the training pipeline could not use it.

Each bad shape is also run through ``train.yaml``'s own transforms and batching, to show that the check refuses
what the pipeline cannot stack or feed to the 2-D network, and accepts what it can.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import list_data_collate
from monai.utils import set_determinism

from monai_probunet.bundle_utils import ConfigValueError
from monai_probunet.data.disk_format import DatasetError, load_datalist, validate_datalist
from monai_probunet.data.validation import validate_cases
from monai_probunet.networks.unet_core import check_image_channels

from .conftest import run_bundle, train_yaml_parser

ONE_MM = np.diag([1.0, 1.0, 1.0, 1.0])


def _case_arrays(shape: tuple[int, ...], seed: int, graders: int = 2) -> tuple[np.ndarray, list[np.ndarray]]:
    """A CT-like image in HU (air, a soft-tissue disc) of ``shape`` and ``graders`` masks of the disc."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape[:2]).astype(np.float32)
    centre = np.array(shape[:2], np.float32)[:, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    image = np.where(r < 6, 40.0, -800.0).astype(np.float32) + rng.normal(0, 20, shape[:2]).astype(np.float32)
    masks = [(r < 5 + g).astype(np.uint8) for g in range(graders)]
    extra = shape[2:]
    if extra:
        image = np.broadcast_to(image.reshape(*shape[:2], *[1] * len(extra)), shape).copy()
        masks = [np.broadcast_to(m.reshape(*shape[:2], *[1] * len(extra)), shape).copy() for m in masks]
    return image, masks


def _save(path: Path, array: np.ndarray, affine: np.ndarray = ONE_MM) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _write_case(root: Path, name: str, image_shape: tuple[int, ...], mask_shape: tuple[int, ...] | None = None,
                seed: int = 0) -> dict:
    """Write one case (image of ``image_shape``, 2 masks of ``mask_shape``, default the image's) at 1 mm."""
    image, masks = _case_arrays(image_shape, seed)
    if mask_shape is not None:
        masks = _case_arrays(mask_shape, seed)[1]
    _save(root / "images" / f"{name}.nii.gz", image)
    labels = []
    for g, mask in enumerate(masks):
        _save(root / "labels" / f"{name}_g{g}.nii.gz", mask)
        labels.append(f"labels/{name}_g{g}.nii.gz")
    return {"image": f"images/{name}.nii.gz", "label": labels, "patient_id": f"P-{name}", "case_id": name}


def _folder(root: Path, shapes: dict[str, tuple[int, ...]] | None = None, **extra: object) -> Path:
    """A dataset of 6 cases of 32 x 32 at 1 mm (c0-c3 training, c4 validation, c5 test); ``shapes`` overrides an
    image's shape (its masks alike); ``extra`` adds top-level keys. Returns the ``datalist.json`` path."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shapes = shapes or {}
    cases = [_write_case(root, f"c{i}", shapes.get(f"c{i}", (32, 32)), seed=i) for i in range(6)]
    content = {"training": cases[:4], "validation": cases[4:5], "test": cases[5:], **extra}
    (root / "datalist.json").write_text(json.dumps(content))
    return root / "datalist.json"


def _problems(datalist: Path, **settings: object) -> list[str]:
    """The problem lines of the error ``validate_cases(datalist, **settings)`` raises (the header line dropped)."""
    with pytest.raises(DatasetError) as info:
        validate_cases(datalist, **settings)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{datalist}: {len(lines) - 1} problem(s) in the dataset, nothing was trained:", lines[0]
    return [line.strip() for line in lines[1:]]


def _training_batches(datalist: Path, passes: int = 6) -> list[dict]:
    """The training split through ``train.yaml``'s own transforms, ``passes`` times, and batched as its loader does
    (all cases in one batch; the random rotations differ between passes)."""
    set_determinism(seed=0)
    try:
        transform = train_yaml_parser().get_parsed_content("train#preprocessing")
        items = load_datalist(datalist, "training")
        return [list_data_collate([transform(dict(item)) for item in items]) for _ in range(passes)]
    finally:
        set_determinism(seed=None)


# --- what the check accepts, the pipeline trains on ----------------------------------------------------------------


def test_a_good_folder_passes_and_its_batches_feed_the_network(tmp_path):
    datalist = _folder(tmp_path / "d")
    assert validate_cases(datalist)["training"][0]["case_id"] == "c0"
    for batch in _training_batches(datalist):
        assert tuple(batch["image"].shape) == (4, 1, 32, 32) and tuple(batch["label"].shape) == (4, 1, 32, 32)
        check_image_channels(batch["image"], in_channels=1, spatial_dims=2)


# --- image shapes the pipeline cannot use are refused up front ------------------------------------------------------


def test_2d_slices_saved_with_a_trailing_axis_of_size_1_are_refused(tmp_path):
    datalist = _folder(tmp_path / "d", {f"c{i}": (32, 32, 1) for i in range(6)})  # as ITK tools write slices
    assert _problems(datalist) == [
        f"{split} case c{i}: image {tmp_path / 'd' / 'images' / f'c{i}.nii.gz'} is 32 x 32 x 1: expected one 2-D "
        "image per case (H x W); save a 2-D slice as a 2-D NIfTI (without the axes of size 1), and its masks too."
        for i, split in enumerate(["training"] * 4 + ["validation", "test"])
    ]
    # what training would have done: the network is 2-D, the loaded images 1 x 32 x 32 x 1
    batch = _training_batches(datalist, passes=1)[0]
    with pytest.raises(ValueError, match=r"got a tensor of shape \(4, 1, 32, 32, 1\)"):
        check_image_channels(batch["image"], in_channels=1, spatial_dims=2)


def test_a_volume_is_refused_and_2d_masks_of_a_volume_too(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root, {"c0": (32, 32, 5)})
    image = root / "images" / "c0.nii.gz"
    volume = (f"training case c0: image {image} is 32 x 32 x 5: expected one 2-D image per case (H x W), the network "
              "is 2-D; save each slice of a volume as its own case, with 2-D masks.")
    assert _problems(datalist) == [volume]
    content = json.loads(datalist.read_text())
    content["training"][0] = _write_case(root, "c0", (32, 32, 5), mask_shape=(32, 32))  # the masks of one slice
    datalist.write_text(json.dumps(content))
    assert _problems(datalist) == [volume] + [
        f"training case c0: label {root / 'labels' / f'c0_g{g}.nii.gz'} is 32 x 32, its image {image} is 32 x 32 x "
        "5: a grader mask must have its image's shape (and number of axes)."
        for g in range(2)
    ]


def test_non_square_images_are_refused(tmp_path):
    datalist = _folder(tmp_path / "d", {f"c{i}": (32, 48) for i in range(6)})
    assert _problems(datalist) == [
        f"{split} case c{i}: image {tmp_path / 'd' / 'images' / f'c{i}.nii.gz'} is 32 x 48: expected a square image "
        "(H = W), the training's random 90-degree rotations turn it to 48 x 32 and the batches cannot stack both; "
        "crop or pad it and its masks to a square."
        for i, split in enumerate(["training"] * 4 + ["validation", "test"])
    ]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        _training_batches(datalist)


def test_an_image_of_another_size_than_the_others_is_refused(tmp_path):
    datalist = _folder(tmp_path / "d", {"c2": (48, 48)})
    assert _problems(datalist) == [(
        f"training case c2: image {tmp_path / 'd' / 'images' / 'c2.nii.gz'} is 48 x 48, most images are 32 x 32; "
        "every image must have one size (the training stacks them into batches): crop or pad it and its masks to "
        "that size."
    )]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        _training_batches(datalist, passes=1)


# --- the check follows the run's config ----------------------------------------------------------------------------

#: what train.yaml (the binary CT task) gives the check of a folder dataset
TRAIN_YAML_CHECK = {"intensity_window": [-1000.0, 400.0], "num_classes": 2, "ignore_index": None, "in_channels": 1,
                    "square_images": True}


def _check_settings(parser) -> dict:
    """What a parsed config gives the check of a folder dataset (``prepare_dataset``'s arguments in ``datalist``)."""
    keys = ("num_classes", "ignore_index", "in_channels", "square_images")
    settings = {k: parser.get_parsed_content(k) for k in keys}
    return {"intensity_window": parser.get_parsed_content("hu_window"), **settings}


def test_train_yaml_refuses_a_0_255_mask_through_its_datalist_entry(tmp_path):
    datalist = _folder(tmp_path / "d")
    mask = tmp_path / "d" / "labels" / "c1_g0.nii.gz"
    _save(mask, np.asarray(nib.load(str(mask)).dataobj) * np.uint8(255))
    assert _check_settings(train_yaml_parser()) == TRAIN_YAML_CHECK
    line = (f"training case c1: label {mask} holds values 0, 255; a grader mask must hold only 0 (background) and 1 "
            "(lesion).")
    assert _problems(datalist) == [line]
    parser = train_yaml_parser(dataset_name="folder", dataset_dir=str(datalist.parent))
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist")
    assert isinstance(info.value.__cause__, DatasetError)
    assert str(info.value.__cause__).splitlines()[1:] == [f"  {line}"]


@pytest.mark.parametrize("overrides", [(), ("scenes32.yaml",), ("augmentation.yaml",), ("paper.yaml",)])
def test_square_images_is_set_where_the_training_rotates_by_90_degrees(overrides):
    parser = train_yaml_parser(*overrides)
    rotates = any("Rotate90" in str(t.get("_target_", "")) for t in parser.get("train#random_transforms"))
    assert parser.get_parsed_content("square_images") is rotates
    assert rotates is (overrides != ("scenes32.yaml",))


def test_square_images_false_turns_the_90_degree_rotation_off():
    for value, prob in [("false", 0.0), (False, 0.0), ("true", 0.5)]:
        parser = train_yaml_parser(square_images=value)  # as --square_images VALUE sets it
        rotation = [t for t in parser.get_parsed_content("train#random_transforms", instantiate=True)
                    if type(t).__name__ == "RandRotate90d"]
        assert [t.prob for t in rotation] == [prob], value


def test_non_square_images_pass_where_the_training_does_not_rotate(tmp_path):
    datalist = _folder(tmp_path / "d", {f"c{i}": (32, 48) for i in range(6)})
    assert validate_cases(datalist, square_images="false")["training"][0]["case_id"] == "c0"  # as the CLI gives it
    with pytest.raises(ConfigValueError, match=r"^--square_images: expected a boolean .* got 'sometimes'\.$"):
        validate_cases(datalist, square_images="sometimes")
    with pytest.raises(ConfigValueError, match=r"^--num_classes: expected a whole number >= 1, got 0\.$"):
        validate_cases(datalist, num_classes=0)


def test_single_channel_images_are_refused_where_the_run_takes_3_channels(tmp_path):
    datalist = _folder(tmp_path / "d")
    with pytest.raises(DatasetError) as info:
        validate_cases(datalist, in_channels=3)
    assert [line.strip() for line in str(info.value).splitlines()[1:]] == [
        f"{split} case c{i}: image {tmp_path / 'd' / 'images' / f'c{i}.nii.gz'} is 32 x 32: expected one 2-D image "
        "of 3 channels per case (in_channels), H x W x 3 with the channel axis last (as preprocessing.cityscapes "
        "writes RGB)."
        for i, split in enumerate(["training"] * 4 + ["validation", "test"])
    ]


def test_a_mask_of_an_rgb_image_must_have_its_height_and_width(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root)
    for i in range(6):
        image = nib.load(str(root / "images" / f"c{i}.nii.gz"))
        rgb = np.repeat(np.asarray(image.dataobj)[..., None], 3, axis=-1)
        _save(root / "images" / f"c{i}.nii.gz", rgb.astype(np.float32))
    settings = {"num_classes": 2, "in_channels": 3, "square_images": False}
    assert validate_cases(datalist, **settings)["test"][0]["case_id"] == "c5"
    mask = root / "labels" / "c2_g1.nii.gz"
    _save(mask, np.zeros((32, 30), np.uint8))
    with pytest.raises(DatasetError) as info:
        validate_cases(datalist, **settings)
    assert str(info.value).splitlines()[1:] == [
        (f"  training case c2: label {mask} is 32 x 30, its image {root / 'images' / 'c2.nii.gz'} is 32 x 32 x 3: "
         "a grader mask must have its image's shape (and number of axes, without its 3 channels).")
    ]


# --- a mask on another voxel grid than its image's ------------------------------------------------------------------


def test_a_mirrored_or_resampled_mask_is_refused_naming_both_files(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root)
    image = root / "images" / "c3.nii.gz"
    mask0, mask1 = root / "labels" / "c3_g0.nii.gz", root / "labels" / "c3_g1.nii.gz"
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored[0, 3] = 31.0  # the same voxels' extent in space, x reversed
    _save(mask0, np.asarray(nib.load(str(mask0)).dataobj)[::-1].copy(), mirrored)
    _save(mask1, np.asarray(nib.load(str(mask1)).dataobj), np.diag([0.5, 0.5, 1.0, 1.0]))
    grid = ("a grader mask must share its image's affine; resample it onto the image, or if its voxels already match "
            "the image's, save it with the image's affine.")
    assert _problems(datalist) == [
        (f"training case c3: label {mask0} lies on another voxel grid than its image {image} (affine: axes LA, the "
         f"image's RA; origin [31.0, 0.0, 0.0] mm, the image's [0.0, 0.0, 0.0] mm): {grid}"),
        (f"training case c3: label {mask1} lies on another voxel grid than its image {image} (affine: spacing [0.5, "
         f"0.5] mm, the image's [1.0, 1.0] mm): {grid}"),
    ]


def test_float_rounding_of_an_oblique_affine_is_not_a_difference(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root)
    angle = np.deg2rad(30.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine[:3, :3] *= [0.7, 0.7, 2.5]
    affine[:3, 3] = [-183.37, 95.21, -412.6]
    for path in [root / "images" / f"c{i}.nii.gz" for i in range(6)]:
        _save(path, np.asarray(nib.load(str(path)).dataobj), affine)
    for path in sorted((root / "labels").glob("*.nii.gz")):  # the masks' grid in the qform only: other rounding
        mask = nib.Nifti1Image(np.asarray(nib.load(str(path)).dataobj), None)
        mask.set_qform(affine, code=1)
        mask.set_sform(None, code=0)
        nib.save(mask, str(path))
    rounding = np.abs(nib.load(str(root / "labels" / "c0_g0.nii.gz")).affine - nib.load(str(root / "images" /
                      "c0.nii.gz")).affine).max()
    assert 0 < rounding < 1e-3
    validate_cases(datalist)


# --- image values the training cannot learn from -------------------------------------------------------------------


def test_an_image_with_nan_voxels_is_refused_an_infinite_value_is_not(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root)
    image = root / "images" / "c2.nii.gz"
    data = np.asarray(nib.load(str(image)).dataobj).copy()
    data[:3, :3] = np.nan
    _save(image, data)
    other = root / "images" / "c3.nii.gz"
    data = np.asarray(nib.load(str(other)).dataobj).copy()
    data[0, 0], data[0, 1] = np.inf, -np.inf  # clipped to the intensity window like any other value
    _save(other, data)
    assert _problems(datalist, **TRAIN_YAML_CHECK) == [
        (f"training case c2: image {image} holds 9 NaN voxels (not a number): clipping to the intensity window keeps "
         "them NaN and the training fails in its first epoch; replace them with a value (in CT air, -1000) or leave "
         "the case out.")
    ]
    # what training would have fed the network
    batch = _training_batches(datalist, passes=1)[0]
    assert bool(batch["image"][2].isnan().any()) and not bool(batch["image"][3].isnan().any())


def _mr_like(root: Path, cases: range = range(6)) -> None:
    """Replace the images of ``cases`` by MR-like ones: a bright disc on tissue, values about 80 to 900, none < 0."""
    rng = np.random.default_rng(0)
    for i in cases:
        path = root / "images" / f"c{i}.nii.gz"
        disc = np.asarray(nib.load(str(root / "labels" / f"c{i}_g0.nii.gz")).dataobj) > 0
        _save(path, (200.0 + 600.0 * disc + rng.normal(0, 30, disc.shape)).astype(np.float32))


def test_images_that_are_not_plausibly_ct_in_hu_are_refused_under_the_ct_window(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root)
    assert validate_cases(datalist, **TRAIN_YAML_CHECK)["test"][0]["case_id"] == "c5"  # CT in HU passes
    _mr_like(root)
    lows = [float(np.asarray(nib.load(str(root / "images" / f"c{i}.nii.gz")).dataobj).min()) for i in range(6)]
    lowest, at = min(lows), int(np.argmin(lows))
    split = ["training"] * 4 + ["validation", "test"]
    line = (f"images not plausibly CT in Hounsfield units: no image has a value at or below -200 (air, lung or fat), "
            f"the lowest is {lowest:g} in {split[at]} case c{at}'s image {root / 'images' / f'c{at}.nii.gz'}; the "
            'intensity window [-1000, 400] (hu_window) is CT\'s: to train on another modality, set --hu_window '
            '"[low, high]" to its intensity range.')
    assert 50 < lowest < 200
    assert _problems(datalist, **TRAIN_YAML_CHECK) == [line]
    # train.yaml's check of a folder dataset: the default hu_window refuses it, the modality's own range passes
    parser = train_yaml_parser(dataset_name="folder", dataset_dir=str(root))
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("datalist")
    assert str(info.value.__cause__).splitlines()[1:] == [f"  {line}"]
    parser = train_yaml_parser(dataset_name="folder", dataset_dir=str(root), hu_window=[0.0, 1000.0])
    assert parser.get_parsed_content("datalist") == str(datalist)
    assert validate_cases(datalist)["test"][0]["case_id"] == "c5"  # no window: not checked


def test_ct_crops_lying_in_soft_tissue_pass_where_one_image_holds_lung(tmp_path):
    """The rule is the dataset's: crops of a chest CT wholly inside a mass or the chest wall (no value at or below
    -200 HU) pass beside the others, which hold lung."""
    root = tmp_path / "d"
    datalist = _folder(root)
    _mr_like(root, range(1, 6))  # values 80 to 900: soft tissue and bone in HU, nothing of air, lung or fat
    assert validate_cases(datalist, **TRAIN_YAML_CHECK)["test"][0]["case_id"] == "c5"


# --- the number of graders ----------------------------------------------------------------------------------------


def test_cases_with_different_grader_counts_are_refused_naming_the_counts(tmp_path):
    datalist = _folder(tmp_path / "d")
    content = json.loads(datalist.read_text())
    for item in content["training"][1::2] + content["test"]:  # c1, c3, c5 with 3 graders: 3 cases of 2, 3 of 3
        item["label"] = [*item["label"], item["label"][0]]
    datalist.write_text(json.dumps(content))
    rule = "every case needs the same number of graders (an absent grader is an empty mask)."
    assert _problems(datalist) == [
        ("cases differ in their number of grader masks, with no number in most of them: 2 graders in 3 cases, 3 in 3 "
         f"(the first of each: training case c0, training case c1); {rule}")
    ]
    content["validation"][0]["label"] = content["validation"][0]["label"][:1]  # c4 with 1 grader
    content["training"][0]["label"] = [*content["training"][0]["label"], content["training"][0]["label"][0]]
    datalist.write_text(json.dumps(content))
    assert _problems(datalist) == [
        f"training case c2: 2 grader masks, most cases have 3 (3 graders in 4 cases, 1 in 1, 2 in 1); {rule}",
        f"validation case c4: 1 grader mask, most cases have 3 (3 graders in 4 cases, 1 in 1, 2 in 1); {rule}",
    ]


# --- paths written with ~ ------------------------------------------------------------------------------------------


def test_paths_under_the_home_folder_written_with_a_tilde_are_checked_and_loaded_alike(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    _folder(home / "mydata")
    content = json.loads((home / "mydata" / "datalist.json").read_text())
    for item in content["training"] + content["validation"] + content["test"]:
        item["image"] = f"~/mydata/{item['image']}"
        item["label"] = [f"~/mydata/{label}" for label in item["label"]]
    item["modes"], item["mode_probs"] = list(item["label"]), [0.5, 0.5]
    datalist = tmp_path / "d" / "datalist.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps(content))
    validate_cases(datalist, **TRAIN_YAML_CHECK)
    (test,) = load_datalist(datalist, "test")
    assert test["image"] == str(home / "mydata" / "images" / "c5.nii.gz")
    assert test["label"] == test["modes"] == [str(home / "mydata" / "labels" / f"c5_g{g}.nii.gz") for g in range(2)]
    batch = _training_batches(datalist, passes=1)[0]  # what the training loads
    assert tuple(batch["image"].shape) == (4, 1, 32, 32)


# --- one image in two splits --------------------------------------------------------------------------------------


def test_an_image_listed_in_two_splits_is_refused_whatever_its_patient_id(tmp_path):
    root = tmp_path / "d"
    datalist = _folder(root)
    content = json.loads(datalist.read_text())
    content["test"][0]["image"] = f"./images/../images/{Path(content['training'][1]['image']).name}"  # c1's image
    content["test"][0]["label"] = content["training"][1]["label"]
    (root / "images" / "c0_link.nii.gz").symlink_to(root / "images" / "c0.nii.gz")
    content["validation"][0]["image"] = str(root / "images" / "c0_link.nii.gz")  # c0's image, through a link
    datalist.write_text(json.dumps(content))
    message = (": an image must be in one split only (the same image in training and test scores the model on what it "
               "has seen).")
    assert _problems(datalist) == [
        f"image {root / 'images' / 'c0.nii.gz'} is listed in training (case c0), validation (case c4){message}",
        f"image {root / 'images' / 'c1.nii.gz'} is listed in training (case c1), test (case c5){message}",
    ]


# --- the known modes of a case (the oracle's distribution) ----------------------------------------------------------


def _with_modes(root: Path) -> tuple[Path, dict]:
    """The dataset of :func:`_folder` whose validation and test cases give their 2 grader masks as the known modes,
    with probabilities 0.7 and 0.3; returns the ``datalist.json`` path and its content."""
    datalist = _folder(root)
    content = json.loads(datalist.read_text())
    for item in content["validation"] + content["test"]:
        item["modes"], item["mode_probs"] = list(item["label"]), [0.7, 0.3]
    datalist.write_text(json.dumps(content))
    return datalist, content


def test_known_modes_that_fit_pass(tmp_path):
    datalist, _ = _with_modes(tmp_path / "d")
    assert validate_cases(datalist, **TRAIN_YAML_CHECK)["test"][0]["mode_probs"] == [0.7, 0.3]
    assert load_datalist(datalist, "test")[0]["modes"] == [str(tmp_path / "d" / "labels" / f"c5_g{g}.nii.gz")
                                                           for g in range(2)]


def test_known_modes_that_do_not_fit_are_refused_one_line_each(tmp_path):
    root = tmp_path / "d"
    datalist, content = _with_modes(root)
    test, validation = content["test"][0], content["validation"][0]
    test["mode_probs"] = [0.6, 0.3]  # sums to 0.9
    test["modes"][1] = "modes/nope.nii.gz"  # no such file
    mode = root / "modes" / "c4_m0.nii.gz"  # a mode stored 0/255
    mode.parent.mkdir()
    _save(mode, np.asarray(nib.load(str(root / validation["label"][0])).dataobj) * np.uint8(255))
    validation["modes"][0] = "modes/c4_m0.nii.gz"
    datalist.write_text(json.dumps(content))
    assert _problems(datalist) == [
        (f"validation case c4: 'modes' file {mode} holds values 0, 255; a mode mask must hold only 0 (background) "
         "and 1 (lesion)."),
        ("test case c5: 'mode_probs' sum to 0.9, not 1: they are the probabilities of the known modes (the true "
         "distribution the oracle draws from)."),
        f"test case c5: 'modes' file {root / 'modes' / 'nope.nii.gz'} does not exist.",
    ]
    del test["mode_probs"]
    validation["mode_probs"] = [0.7, 0.3, 0.0]
    datalist.write_text(json.dumps(content))
    refused = _problems(datalist)
    assert refused[0] == ("validation case c4: 'mode_probs' holds 3 values for 2 'modes' files: one probability per "
                          "mode.")
    assert refused[2:] == [("test case c5: 'modes' without 'mode_probs': give both (the known modes' mask files and "
                            "their probabilities) or neither.")]
    validation["mode_probs"] = [0.7, "0.3"]
    datalist.write_text(json.dumps(content))
    assert _problems(datalist)[0] == ("validation case c4: 'mode_probs' must be a list of probabilities (numbers >= "
                                      "0), one per 'modes' file, got [0.7, \"0.3\"].")


# --- a misspelt split ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, shown",
    [("tests", "cases", "'tests' (1 case; did you mean 'test'?)"),
     ("valdation", [], "'valdation' (0 cases; did you mean 'validation'?)"),
     ("Test", "cases", "'Test' (1 case; did you mean 'test'?)"),
     ("val", "cases", "'val' (1 case)")],
)  # fmt: skip
def test_a_misspelt_split_is_refused(tmp_path, key, value, shown):
    datalist = _folder(tmp_path / "d")
    content = json.loads(datalist.read_text())
    content[key] = content.pop("test") if value == "cases" else value
    datalist.write_text(json.dumps(content))
    message = (f"{datalist}: top-level key {shown} is not a split, so no case in it would be used: the splits are "
               "'training', 'validation', 'test' (the other top-level keys are metadata and hold no cases).")
    with pytest.raises(DatasetError) as info:
        validate_datalist(datalist)
    assert str(info.value) == message
    with pytest.raises(DatasetError) as info:
        validate_cases(datalist)
    assert str(info.value) == message


def test_two_misspelt_splits_are_named_in_one_line(tmp_path):
    datalist = _folder(tmp_path / "d", tests=[], valdation=[])
    with pytest.raises(DatasetError) as info:
        validate_datalist(datalist)
    assert str(info.value) == (
        f"{datalist}: top-level keys 'tests' (0 cases; did you mean 'test'?), 'valdation' (0 cases; did you mean "
        "'validation'?) are not splits, so no case in them would be used: the splits are 'training', 'validation', "
        "'test' (the other top-level keys are metadata and hold no cases)."
    )


def test_metadata_keys_are_allowed(tmp_path):
    meta = {"name": "mine", "description": "d", "spacing": [1.0, 1.0], "num_graders": 2, "labels": {"lesion": 1},
            "validation_cities": ["aachen", "bonn"], "patterns": [{"index": 0, "probability": 1.0}],
            "generator": {"name": "x"}, "modality": {"0": "CT"}, "numTraining": 4}
    datalist = _folder(tmp_path / "d", **meta)
    assert validate_cases(datalist)["validation_cities"] == ["aachen", "bonn"]


# --- the bundle command --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bundle_refuses_a_slice_with_a_trailing_axis_in_one_line(tmp_path):
    datalist = _folder(tmp_path / "d", {"c1": (32, 32, 1)})
    proc = run_bundle("--dataset_name", "folder", "--dataset_dir", str(datalist.parent), "--max_epochs", "1",
                      "--channels", "[8, 16, 32]", "--ckpt_dir", str(tmp_path / "m"))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{datalist}: 1 problem(s)" in errors[0], proc.stderr[-3000:]
    assert f"image {datalist.parent / 'images' / 'c1.nii.gz'} is 32 x 32 x 1: expected one 2-D image" in proc.stderr
    assert not (tmp_path / "m").exists()
