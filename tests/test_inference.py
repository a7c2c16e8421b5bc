"""Inference on CT images (monai_probunet.inference), the CLI, the bundle `inferring` run id and the export wrapper.

The model is a tiny ProbUNet built here with hand-set weights (no checkpoint from the repository): its prior is
N(0, I) and its f_comb paints the whole 64 x 64 crop as lesion iff the first latent is positive, so hypotheses are
"a 32 mm x 32 mm square around the centre" or "nothing" with probability 1/2 each. That makes the geometry of the
mapping back onto the input grid and the presence/variant summaries checkable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_probunet.inference import (
    FALLBACK_RULE,
    Hypotheses,
    find_presence_threshold,
    group_variants,
    load_ct,
    load_model,
    predict_hypotheses,
    read_inference_cases,
)
from monai_probunet.metrics import PresenceThreshold
from monai_probunet.networks import ProbUNet, ProbUNetSampler, unstack_hypotheses
from monai_probunet.predict3d import predict_hypotheses_3d

REPO = Path(__file__).resolve().parents[1]
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"
INFER_YAML = REPO / "bundle" / "configs" / "inference.yaml"
METADATA = REPO / "bundle" / "configs" / "metadata.json"
CHANNELS = [4, 8, 16]
LATENT = 2
#: train.yaml overrides that give the network of :func:`coin_flip_probunet` (the paper's prior pooling and posterior)
PAPER_NET = {"channels": CHANNELS, "latent_dim": LATENT, "fcomb_channels": CHANNELS[0], "prior_pooling": None,
             "posterior_context": True}


def paper_net_yaml(folder: Path) -> str:
    """:data:`PAPER_NET` as an override file in ``folder`` (a bundle command drops a ``None`` from its command
    line)."""
    path = folder / "paper_net.yaml"
    path.write_text(json.dumps(PAPER_NET))  # JSON is YAML
    return str(path)
S = 16

pydicom_data = pytest.importorskip("pydicom.data")


def coin_flip_probunet() -> ProbUNet:
    """Tiny ProbUNet: P = N(0, I); every pixel of the crop is lesion iff z_0 > 0."""
    torch.manual_seed(0)
    net = ProbUNet(spatial_dims=2, channels=CHANNELS, latent_dim=LATENT)
    with torch.no_grad():
        net.prior_net.head.weight.zero_()
        net.prior_net.head.bias.zero_()
        f = net.fcomb
        nf = f.feature_channels
        f.first.weight.zero_()
        f.first.bias.zero_()
        f.first.weight[0, nf] = 1.0  # h0 = relu(z0)
        f.first.weight[1, nf] = -1.0  # h1 = relu(-z0)
        f.rest[0].weight.zero_()
        f.rest[0].bias.zero_()
        f.rest[0].weight[0, 0] = 1.0
        f.rest[0].weight[1, 1] = 1.0
        f.rest[-1].weight.zero_()
        f.rest[-1].bias.zero_()
        f.rest[-1].weight[1, 0] = 10.0  # lesion logit
        f.rest[-1].weight[0, 1] = 10.0  # background logit
    return net.eval()


@pytest.fixture(scope="module")
def net() -> ProbUNet:
    return coin_flip_probunet()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, net) -> Path:
    """``<tmp>/models/model.pt`` (state dict) and ``<tmp>/net.yaml`` (network_def + hu_window)."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    (root / "net.yaml").write_text(
        "hu_window: [-1000.0, 400.0]\n"
        "infer_spacing: [0.5, 0.5]\n"
        "network_def:\n"
        "  _target_: monai_probunet.networks.ProbUNet\n"
        "  spatial_dims: 2\n"
        f"  channels: {CHANNELS}\n"
        f"  latent_dim: {LATENT}\n"
    )
    return root / "models" / "model.pt"


@pytest.fixture(scope="module")
def ct_small() -> str:
    path = pydicom_data.get_testdata_file("CT_small.dcm")
    assert path is not None
    return path


VOL_AFFINE = np.array([[-0.7, 0.0, 0.0, 50.0], [0.0, 0.8, 0.0, -20.0], [0.0, 0.0, 2.5, -100.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A 60 x 50 x 12 CT-like NIfTI volume (0.7 x 0.8 x 2.5 mm, x flipped) with a small dense blob."""
    vol = np.full((60, 50, 12), -800.0, np.float32)
    vol[25:35, 20:30, 5:8] = 40.0
    path = tmp_path_factory.mktemp("vol") / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, VOL_AFFINE), str(path))
    return path


def _predict(*args, **kwargs) -> Hypotheses:
    kwargs.setdefault("spacing", 0.5)  # the tiny model's spacing (net.yaml's infer_spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return predict_hypotheses(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ library


def test_dicom_slice_on_input_grid(ct_small, net):
    img, _ = load_ct(ct_small)
    assert tuple(img.shape) == (1, 128, 128)
    h = _predict(ct_small, (64, 70), net, num_samples=S, seed=0)
    # outputs on the input's grid and geometry
    assert h.labels.shape == (S, 128, 128) and h.labels.dtype == np.uint8
    assert h.mean_probability.shape == h.entropy.shape == (128, 128)
    np.testing.assert_allclose(h.affine, np.asarray(img.affine))
    # DICOM LPS (ImagePositionPatient) -> RAS affine: x and y flipped
    np.testing.assert_allclose(h.affine[:3, 3], [158.135803, 179.035797, -75.699997], atol=1e-4)
    assert 0.0 <= h.mean_probability.min() and h.mean_probability.max() <= 1.0
    assert 0.0 <= h.entropy.min() and h.entropy.max() <= 1.0 + 1e-6
    assert set(np.unique(h.labels)) <= {0, 1}
    # presence: fraction of hypotheses with a lesion, on a coin flip model strictly between 0 and 1
    present = h.labels.reshape(S, -1).any(axis=1)
    assert h.presence_count == int(present.sum()) and h.presence_probability == pytest.approx(present.mean())
    assert 0 < h.presence_count < S
    # a lesion hypothesis is the 64 x 0.5 mm = 32 mm ROI square around the centre, resampled to 0.6615 mm
    k = int(np.argmax(present))
    rows, cols = np.nonzero(h.labels[k])
    side = 32.0 / 0.661468
    assert abs(rows.max() - rows.min() + 1 - side) <= 2 and abs(cols.max() - cols.min() + 1 - side) <= 2
    assert abs((rows.max() + rows.min()) / 2 - 64) <= 1.5 and abs((cols.max() + cols.min()) / 2 - 70) <= 1.5
    assert h.areas_mm2[k] == pytest.approx(1024.0)
    assert h.labels[k].sum() * 0.661468**2 == pytest.approx(1024.0, rel=0.06)
    assert h.volumes_mm3 is None and h.slice_axis is None
    # mean probability = presence fraction inside the ROI, 0 outside; entropy of a p = 0.5 mix is 1 bit
    assert h.mean_probability[64, 70] == pytest.approx(h.presence_probability, abs=0.02)
    assert h.mean_probability[0, 0] == 0.0 and h.entropy[0, 0] == 0.0
    # variants: lesion square vs empty, most frequent first, frequencies sum to 1
    assert len(h.variants) == 2
    assert [v.count for v in h.variants] == sorted((v.count for v in h.variants), reverse=True)
    assert sum(v.frequency for v in h.variants) == pytest.approx(1.0)
    assert sorted(i for v in h.variants for i in v.members) == list(range(S))
    np.testing.assert_array_equal(h.most_frequent_label, h.labels[h.variants[0].representative])


def test_same_seed_same_output(ct_small, net):
    a = _predict(ct_small, (64, 70), net, num_samples=S, seed=0)
    b = _predict(ct_small, (64, 70), net, num_samples=S, seed=0)
    c = _predict(ct_small, (64, 70), net, num_samples=S, seed=1)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mean_probability, b.mean_probability)
    np.testing.assert_array_equal(a.entropy, b.entropy)
    assert a.to_report() == b.to_report()
    assert not np.array_equal(a.labels, c.labels)


def test_world_centres(ct_small, net):
    ipp = np.array([-158.135803, -179.035797, -75.699997])  # ImagePositionPatient (LPS) of voxel (0, 0)
    sp = 0.661468
    lps = ipp + [64 * sp, 70 * sp, 0.0]  # column 64 (x), row 70 (y)
    h = _predict(ct_small, list(lps), net, world=True, frame="LPS", num_samples=2)
    np.testing.assert_allclose(h.center_voxel, (64, 70), atol=1e-4)
    ras = [-lps[0], -lps[1], lps[2]]
    np.testing.assert_allclose(h.center_world_ras, ras, atol=1e-4)
    h2 = _predict(ct_small, ras, net, world=True, frame="RAS", num_samples=2)
    h3 = _predict(ct_small, ras[:2], net, world=True, num_samples=2)  # in-plane only: z from the slice
    np.testing.assert_allclose(h2.center_voxel, (64, 70), atol=1e-4)
    np.testing.assert_allclose(h3.center_voxel, (64, 70), atol=1e-4)


def test_volume_nifti(volume, net, tmp_path):
    h = _predict(str(volume), (30, 25, 6), net, num_samples=S, seed=0)
    assert h.labels.shape == (S, 60, 50, 12)
    np.testing.assert_allclose(h.affine, VOL_AFFINE)
    assert h.slice_axis == 2 and h.slice_index == 6
    other = np.delete(h.labels, 6, axis=3)
    assert not other.any() and not np.delete(h.mean_probability, 6, axis=2).any()
    assert h.labels[:, :, :, 6].any()
    np.testing.assert_allclose(h.volumes_mm3, h.areas_mm2 * 2.5)
    # world centre (RAS mm) of the same voxel
    w = VOL_AFFINE @ [30, 25, 6, 1]
    hw = _predict(str(volume), list(w[:3]), net, world=True, num_samples=2)
    np.testing.assert_allclose(hw.center_voxel, (30, 25, 6), atol=1e-6)
    # an already loaded MetaTensor gives the same result
    img, _ = load_ct(volume)
    hm = _predict(img, (30, 25, 6), net, num_samples=S, seed=0)
    np.testing.assert_array_equal(hm.labels, h.labels)
    # files: 4-D hypotheses, 3-D maps, the input's affine, report.json
    paths = h.save(tmp_path / "out")
    hyp = nib.load(str(paths["hypotheses"]))
    assert hyp.shape == (60, 50, 12, S)
    np.testing.assert_allclose(hyp.affine, VOL_AFFINE, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(hyp.dataobj)[..., 3], h.labels[3])
    for name in ("mean_probability", "entropy", "variant_label"):
        im = nib.load(str(paths[name]))
        assert im.shape == (60, 50, 12)
        np.testing.assert_allclose(im.affine, VOL_AFFINE, atol=1e-6)
    report = json.loads(paths["report"].read_text())
    for key in ("presence_probability", "ambiguous", "ambiguity_rule", "variants", "areas_mm2", "volumes_mm3",
                "area_mm2_spread", "volume_mm3_spread", "center_voxel", "center_world_ras", "files"):
        assert key in report
    assert report["volume_mm3_spread"]["max"] == pytest.approx(float(h.volumes_mm3.max()))


def _same_world_other_storage(vol: np.ndarray, affine: np.ndarray, flips=(0, 1), order=(0, 1, 2)):
    """The same image stored in another voxel order: axes flipped and permuted, the affine moved with them."""
    out, aff = vol, affine.copy()
    for a in flips:
        out = np.flip(out, a)
        shift = np.eye(4)
        shift[a, a], shift[a, 3] = -1.0, vol.shape[a] - 1
        aff = aff @ shift
    perm = np.eye(4)
    perm[:3, :3] = np.eye(3)[:, list(order)]
    return np.ascontiguousarray(out.transpose(order)), aff @ perm


def test_the_answer_follows_the_anatomy_not_the_voxel_order(volume, net, tmp_path):
    """The same CT stored flipped or with its axes in another order (a prone scan, a converter's choice) gives the
    same hypotheses: every image is turned to the model's axis directions before the model sees it, and back."""
    img = nib.load(str(volume))
    vol, affine = np.asarray(img.dataobj), img.affine
    centre = np.array([28.0, 23.0, 6.0])
    world = (affine @ [*centre, 1])[:3]
    ref = _predict(str(volume), list(world), net, world=True, num_samples=S, seed=3)
    assert ref.presence_count > 0
    for flips, order in [((0, 1), (0, 1, 2)), ((0,), (1, 0, 2)), ((1, 2), (2, 0, 1))]:
        other_vol, other_aff = _same_world_other_storage(vol, affine, flips, order)
        path = tmp_path / f"other_{''.join(map(str, flips))}_{''.join(map(str, order))}.nii.gz"
        nib.save(nib.Nifti1Image(other_vol, other_aff), str(path))
        h = _predict(str(path), list(world), net, world=True, num_samples=S, seed=3)
        np.testing.assert_array_equal(h.crop_labels, ref.crop_labels)  # the model saw the same crop
        np.testing.assert_allclose(h.areas_mm2, ref.areas_mm2)
        # the outlines on the input's grid are the reference's, stored the other way
        for s in range(S):
            stored, _ = _same_world_other_storage(ref.labels[s], affine, flips, order)
            np.testing.assert_array_equal(h.labels[s], stored)
    # the 3-D answer too (each slice goes through the same model grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref3 = predict_hypotheses_3d(str(volume), list(world), net, world=True, spacing=0.5, num_samples=S, seed=3)
        h3 = predict_hypotheses_3d(str(path), list(world), net, world=True, spacing=0.5, num_samples=S, seed=3)
    assert list(h3.slice_indices) == [11 - k for k in ref3.slice_indices][::-1]  # order (2, 0, 1), axis 2 flipped
    np.testing.assert_allclose(h3.volumes_mm3, ref3.volumes_mm3)


def test_dicom_series_folder(net, tmp_path):
    src = Path(pydicom_data.get_testdata_file("dicomdirtests/77654033/CT2/17136")).parent
    # pydicom's folder is part of a series: slice 18 and slices 180-182, 1.25 mm apart; stacked, the 202 mm gap
    # was spread over the four as a 68 mm slice spacing
    with pytest.raises(ValueError, match=r"slice gaps are not uniform: 202 mm between 17106 and 17136, 1\.25 mm"):
        load_ct(src)
    folder = tmp_path / "CT2"
    folder.mkdir()
    for name in ("17136", "17166", "17196"):
        shutil.copy(src / name, folder / name)
    # a 16 x 16 series at 0.49 mm: 7.8 mm, smaller than the 64 px field at 0.5 mm (refused), covers an 8 px one
    with pytest.raises(ValueError, match="smaller than the model's field"):
        _predict(folder, (8, 8, 1), net, num_samples=4)
    h = _predict(folder, (8, 8, 1), net, num_samples=4, roi_size=8)
    img, _ = load_ct(folder)
    assert h.labels.shape == (4, *img.shape[1:]) and h.slice_axis == 2
    assert img.shape[-1] == 3 and float(img.affine[2, 2]) == pytest.approx(1.25, abs=1e-4)


def test_save_slice(ct_small, net, tmp_path):
    h = _predict(ct_small, (64, 70), net, num_samples=S)
    paths = h.save(tmp_path)
    hyp = nib.load(str(paths["hypotheses"]))
    assert hyp.shape == (128, 128, 1, S)
    np.testing.assert_allclose(hyp.affine, h.affine, atol=1e-6)
    assert nib.load(str(paths["mean_probability"])).shape == (128, 128)


def test_load_model_finds_the_checkpoints_bundle_config(ckpt, tmp_path):
    """Without a config, load_model builds the network of the bundle holding the checkpoint (models/<task>/<variant>
    included); a checkpoint outside a bundle folder gets the package's bundle/configs/train.yaml."""
    from monai_probunet.model_loading import REPO_CONFIG, bundle_config

    bundle = tmp_path / "mybundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models" / "task" / "variant").mkdir(parents=True)
    shutil.copy(ckpt.parent.parent / "net.yaml", bundle / "configs" / "train.yaml")
    model_pt = bundle / "models" / "task" / "variant" / "model.pt"
    shutil.copy(ckpt, model_pt)
    assert bundle_config(model_pt) == (bundle / "configs" / "train.yaml").resolve()
    net, settings = load_model(model_pt)  # the tiny network of the bundle's config, not the package's default one
    assert list(settings["spacing"]) == [0.5, 0.5]
    assert isinstance(net, ProbUNet) and net.latent_dim == LATENT
    assert bundle_config(ckpt) == REPO_CONFIG  # <tmp>/models/model.pt: no configs/train.yaml beside models/
    assert bundle_config(tmp_path / "elsewhere" / "model.pt") == REPO_CONFIG


def test_presence_threshold_and_fallback(ct_small, net, ckpt, tmp_path):
    with pytest.warns(UserWarning, match="0.5 rule"):
        h = predict_hypotheses(ct_small, (64, 70), net, num_samples=S, spacing=0.5)
    p = h.presence_probability
    assert h.ambiguity_rule == FALLBACK_RULE and h.ambiguous == (0.25 <= p <= 0.75)
    c = h.presence_count
    inside = PresenceThreshold(low=c - 1, high=c + 1, accuracy=0.8, num_samples=S)
    outside = PresenceThreshold(low=c, high=c + 1, accuracy=0.8, num_samples=S)
    assert _predict(ct_small, (64, 70), net, num_samples=S, threshold=inside).ambiguous
    assert not _predict(ct_small, (64, 70), net, num_samples=S, threshold=outside).ambiguous
    # the evaluation's presence_threshold.json next to the checkpoint
    assert find_presence_threshold(tmp_path / "model.pt") is None
    (tmp_path / "presence_threshold.json").write_text(json.dumps(inside.to_dict()))
    found = find_presence_threshold(tmp_path / "model.pt")
    assert found == inside
    h2 = _predict(ct_small, (64, 70), net, num_samples=S, threshold=tmp_path / "presence_threshold.json")
    assert h2.ambiguous and h2.threshold == inside and "fitted" in h2.ambiguity_rule


def test_group_variants():
    sq = torch.zeros(20, 20, dtype=torch.long)
    sq[5:15, 5:15] = 1
    near = sq.clone()
    near[14, 5:10] = 0  # IoU 95/100
    other = torch.zeros_like(sq)
    other[0:4, 0:4] = 1
    empty = torch.zeros_like(sq)
    labels = torch.stack([other, sq, empty, near, sq, empty, sq])
    v = group_variants(labels, pixel_area_mm2=0.25)
    assert [g.members for g in v] == [(1, 3, 4, 6), (2, 5), (0,)]
    assert v[0].representative == 1 and v[0].area_mm2 == pytest.approx(25.0) and v[0].frequency == pytest.approx(4 / 7)
    assert not v[1].has_lesion and v[2].has_lesion


# ------------------------------------------------------------------------------------------------ bad inputs


def _bad_inputs(tmp: Path) -> dict[str, tuple]:
    nan = np.zeros((20, 20, 5), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 5, 2), np.float32), np.eye(4)), str(tmp / "two_channels.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((20,), np.float32), np.eye(4)), str(tmp / "line.nii.gz"))
    (tmp / "corrupt.nii.gz").write_bytes(b"not a nifti file" * 4)
    mr = pydicom_data.get_testdata_file("MR_small.dcm")
    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    return {
        "nan": ((tmp / "nan.nii.gz", (5, 5, 2)), {}, r"nan\.nii\.gz.*NaN"),
        "channels": ((tmp / "two_channels.nii.gz", (5, 5, 2)), {}, r"two_channels.*values per voxel"),
        "rank": ((tmp / "line.nii.gz", (5,)), {}, r"line\.nii\.gz.*2-D slice"),
        "corrupt": ((tmp / "corrupt.nii.gz", (5, 5)), {}, r"could not read image .*corrupt"),
        "non_ct": ((mr, (5, 5)), {}, r"MR_small\.dcm.*Modality 'MR'"),
        "outside": ((ct, (130, 5)), {}, r"center .*outside the image .*CT_small"),
        "negative": ((ct, (-3, 5)), {}, r"outside the image"),
        "length": ((ct, (5, 5, 5)), {}, r"center: a voxel centre of a 2-D image needs 2"),
        "off_plane": ((ct, (0, 0, 0)), {"world": True}, r"off the plane"),
        "not_numbers": ((ct, ("a", 5)), {}, r"center must be a sequence of numbers"),
        "tensor": ((torch.zeros(1, 20, 20), (5, 5)), {}, r"image: a plain tensor"),
        "not_channel_first": ((MetaTensor(torch.zeros(20, 20, 3)), (5, 5, 1)), {}, r"values per voxel"),
        "num_samples": ((ct, (5, 5)), {"num_samples": 0}, r"num_samples"),
        "frame": ((ct, (5, 5)), {"world": True, "frame": "XYZ"}, r"frame"),
        "hu_window": ((ct, (5, 5)), {"hu_window": (400, -1000)}, r"hu_window"),
    }


@pytest.mark.parametrize(
    "case",
    ["nan", "channels", "rank", "corrupt", "non_ct", "outside", "negative", "length", "off_plane", "not_numbers",
     "tensor", "not_channel_first", "num_samples", "frame", "hu_window"],
)
def test_bad_inputs(case, net, tmp_path):
    args, kwargs, match = _bad_inputs(tmp_path)[case]
    with pytest.raises(ValueError, match=match):
        _predict(*args, net, **kwargs)


def test_missing_file(net, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _predict(tmp_path / "nope.nii.gz", (1, 1), net)


# ------------------------------------------------------------------------------------------------ CLI, bundle


def test_cli_end_to_end(ct_small, ckpt, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai_probunet.infer", ct_small, "--center", "64", "70", "--out", str(out),
           "--ckpt", str(ckpt), "--config", str(ckpt.parent.parent / "net.yaml"), "--num-samples", "8", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/", env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "lesion presence" in r.stdout and "0.5 rule" in r.stderr
    for name in ("hypotheses.nii.gz", "mean_probability.nii.gz", "entropy.nii.gz", "variant_label.nii.gz"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 8 and report["seed"] == 3 and len(report["areas_mm2"]) == 8
    assert nib.load(str(out / "hypotheses.nii.gz")).shape == (128, 128, 1, 8)
    # same call in process gives the same report (same seed)
    model, _ = load_model(ckpt, ckpt.parent.parent / "net.yaml")
    h = _predict(ct_small, (64, 70), model, num_samples=8, seed=3)
    assert report["presence_count"] == h.presence_count and report["areas_mm2"] == list(h.areas_mm2)


def test_cli_bad_input(ckpt, tmp_path, capsys):
    from monai_probunet.infer import main

    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    base = ["--out", str(tmp_path), "--ckpt", str(ckpt), "--config", str(ckpt.parent.parent / "net.yaml")]
    assert main([ct, "--center", "500", "1", *base]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.nii.gz"), "--center", "1", "1", *base]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bundle_pieces_are_predict_hypotheses(ct_small, ckpt, net):
    """inference.yaml's preprocessing / inferer / postprocessing ids are the pieces predict_hypotheses composes:
    run on a DICOM slice (a centre near the border too) and a NIfTI volume, they give the same hypotheses."""
    from monai.bundle import ConfigParser
    from monai.transforms import ScaleIntensityRanged

    from monai_probunet.inference_transforms import (
        HypothesesInferer,
        InvertModelGridd,
        LoadCTd,
        ModelGridd,
        PresenceSummaryd,
        run_hypotheses,
    )

    parser = ConfigParser()
    parser.read_config([str(TRAIN_YAML), str(INFER_YAML)])
    parser["bundle_root"] = str(REPO / "bundle")
    parser["infer_spacing"] = [0.5, 0.5]
    parser["infer_num_samples"] = 8
    parser["infer_seed"] = 5
    parser["ckpt_path"] = str(ckpt)
    pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    assert [type(t) for t in pre.transforms if type(t) in (LoadCTd, ScaleIntensityRanged, ModelGridd)] == [
        LoadCTd, ScaleIntensityRanged, ModelGridd]
    assert isinstance(inferer, HypothesesInferer) and (inferer.num_samples, inferer.seed) == (8, 5)
    assert any(isinstance(t, InvertModelGridd) for t in post.transforms)
    assert any(isinstance(t, PresenceSummaryd) for t in post.transforms)
    vol = np.full((120, 100, 6), -800.0, np.float32)
    vol[50:60, 40:50, 2:4] = 40.0
    vol_img = MetaTensor(torch.as_tensor(vol)[None], affine=torch.as_tensor(VOL_AFFINE))
    for image, center in ((ct_small, (64, 70)), (ct_small, (1, 126)), (vol_img, (55, 45, 3))):
        got = run_hypotheses({"image": image, "center": center}, net, pre, inferer, post)
        ref = _predict(image, center, net, num_samples=8, seed=5)
        for key in ("labels", "mean_probability", "entropy", "crop_labels", "areas_mm2", "affine"):
            np.testing.assert_array_equal(getattr(got, key), getattr(ref, key), err_msg=key)
        assert got.to_report() == ref.to_report()
        assert got.labels.shape[0] == 8 and got.spatial_shape == ref.spatial_shape


def test_bundle_evaluator_runs_the_pieces(ct_small, ckpt, net, tmp_path):
    """inference.yaml's ``evaluator`` is MONAI's SupervisedEvaluator over the cases with the ``inferer`` and
    ``postprocessing`` ids (run on MODEL_COMPLETED) and the ``preprocessing`` id in its iteration; ``infer#runner``
    runs it: a case's files hold predict_hypotheses' hypotheses, a failed case keeps its error and the run goes on."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator
    from monai.engines.utils import IterationEvents

    from monai_probunet.batch_inference import FailedCasesError
    from monai_probunet.inference_evaluator import HypothesesIteration, HypothesesWriter

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ct_small, data / "ct_small.dcm")
    (data / "centers.json").write_text(json.dumps({"ct_small.dcm": [64, 70], "gone.nii.gz": [1, 1],
                                                   "again.dcm": [1, 126]}))
    shutil.copy(ct_small, data / "again.dcm")
    parser = ConfigParser()
    parser.read_config([str(TRAIN_YAML), str(INFER_YAML)])
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_path": str(ckpt), "infer_spacing": [0.5, 0.5],
                   "infer_num_samples": 4, "infer_seed": 3, "dataset_dir": str(data),
                   "output_dir": str(tmp_path / "out"),
                   **PAPER_NET, "device": "$torch.device('cpu')", "infer_progress": False})
    evaluator = parser.get_parsed_content("evaluator")
    pre, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    assert isinstance(evaluator, SupervisedEvaluator) and evaluator.inferer is inferer
    assert evaluator.network is parser.get_parsed_content("network_def")
    iteration = evaluator._process_function
    assert isinstance(iteration, HypothesesIteration) and iteration.preprocessing is pre and not iteration.three_d
    assert len(evaluator.data_loader) == 3
    writers = [getattr(h[0], "__self__", None) for h in evaluator._event_handlers[Events.COMPLETED]]
    assert any(isinstance(w, HypothesesWriter) for w in writers)
    seen = []
    evaluator.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: seen.append(sorted(e.state.output)))
    with pytest.raises(FailedCasesError, match="1 of 3 case") as failed:  # the bundle command: one line, exit 2
        parser.get_parsed_content("infer#runner")()
    summary = failed.value.summary  # raised after the run: the good cases are written
    assert summary["num_ok"] == 2 and summary["num_failed"] == 1
    assert "does not exist" in {r["case_id"]: r for r in summary["cases"]}["gone"]["error"]
    # the evaluator's postprocessing (registered first) ran on MODEL_COMPLETED, once per good case
    assert len(seen) == 2 and {"pred", "hypotheses"} <= set(seen[0])
    for case, center in (("ct_small", (64, 70)), ("again", (1, 126))):
        ref = _predict(ct_small, center, net, num_samples=4, seed=3)
        got = np.asarray(nib.load(str(tmp_path / "out" / case / "hypotheses.nii.gz")).dataobj)
        np.testing.assert_array_equal(np.moveaxis(got[..., 0, :], -1, 0), ref.labels)
        rep = json.loads((tmp_path / "out" / case / "report.json").read_text())
        assert rep["presence_count"] == ref.presence_count and rep["seed"] == 3 and rep["prior_sampling"] == "sobol"


@pytest.mark.slow
def test_bundle_inferring(ct_small, ckpt, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ct_small, data / "ct_small.dcm")
    img = np.full((100, 100), -900.0, np.float32)  # 70 mm: covers the 64 px field at train.yaml's 1 mm
    nib.save(nib.Nifti1Image(img, np.diag([0.7, 0.7, 1.0, 1.0])), str(data / "slice.nii.gz"))
    ipp = np.array([-158.135803, -179.035797, -75.699997])
    centers = {
        "slice.nii.gz": [50, 50],
        "ct_small.dcm": {"center": list(ipp + [64 * 0.661468, 70 * 0.661468, 0.0]), "world": True, "frame": "LPS"},
        "bad.nii.gz": [1, 1],  # missing file: recorded as failed, the run goes on
    }
    (data / "centers.json").write_text(json.dumps(centers))
    assert [c["case_id"] for c in read_inference_cases(data)] == ["slice", "ct_small", "bad"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
           str([str(TRAIN_YAML), str(INFER_YAML), paper_net_yaml(tmp_path)]), "--dataset_dir", str(data),
           "--output_dir", str(out), "--ckpt_path", str(ckpt), "--infer_num_samples", "4", "--device", "cpu",
           "--bundle_root", str(REPO / "bundle")]  # run from "/"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/", env=env, check=False)
    assert r.returncode == 2, r.stderr[-3000:]  # bad.nii.gz failed: one line, exit status 2, the good cases written
    assert "error: 1 of 3 case(s) failed (bad)" in r.stderr
    # the progress where the output is no terminal: log lines (the bundle's log goes to stdout), not tqdm's bar
    assert "inferring: 3/3 images, 2 ok, " in r.stdout and "\r" not in r.stdout + r.stderr, r.stdout[-3000:]
    assert "nvImageCodec" not in r.stdout + r.stderr  # MONAI's absent GPU decoder: quiet (bundle_utils.quiet_optional_decoder)
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["num_ok"] == 2 and summary["num_failed"] == 1
    rows = {row["case_id"]: row for row in summary["cases"]}
    assert "does not exist" in rows["bad"]["error"]
    rep = json.loads((out / "ct_small" / "report.json").read_text())
    np.testing.assert_allclose(rep["center_voxel"], [64, 70], atol=1e-3)
    assert nib.load(str(out / "slice" / "hypotheses.nii.gz")).shape == (100, 100, 1, 4)


# ------------------------------------------------------------------------------------------------ export


def test_export_wrapper_matches_sample(net, tmp_path):
    x = torch.rand(1, 1, 64, 64)
    wrapper = ProbUNetSampler(net, num_samples=S, seed=7).eval()
    ref = net.sample(x, S, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = wrapper(x)
        assert out.shape == (1, S * 2, 64, 64)
        torch.testing.assert_close(unstack_hypotheses(out, 2), ref, rtol=0, atol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, x)
        torch.jit.save(traced, str(tmp_path / "m.ts"))
        loaded = torch.jit.load(str(tmp_path / "m.ts"))
        torch.testing.assert_close(unstack_hypotheses(loaded(x), 2), ref, rtol=1e-6, atol=1e-5)
        # same noise on another image
        y = torch.rand(1, 1, 64, 64)
        torch.testing.assert_close(
            unstack_hypotheses(loaded(y), 2), net.sample(y, S, generator=torch.Generator().manual_seed(7)),
            rtol=1e-6, atol=1e-5,
        )
    # the wrapper loads the network's own state dict (model.pt as training writes it)
    fresh = ProbUNetSampler(ProbUNet(spatial_dims=2, channels=CHANNELS, latent_dim=LATENT), num_samples=S, seed=7)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), out, rtol=0, atol=0)
    assert set(fresh.state_dict()) == {f"network.{k}" for k in net.state_dict()}


@pytest.mark.slow
def test_bundle_export_and_verify(net, ckpt, tmp_path):
    """`verify_net_in_out` and `ckpt_export` (trace) on `export_def` against metadata.json (run in process)."""
    from monai.bundle import ckpt_export, verify_net_in_out

    meta = json.loads(METADATA.read_text())["network_data_format"]
    assert meta["outputs"]["pred"]["num_channels"] == S * 2
    files = [str(TRAIN_YAML), str(INFER_YAML), paper_net_yaml(tmp_path)]
    verify_net_in_out(net_id="export_def", meta_file=str(METADATA), config_file=files, device="cpu")
    ts = tmp_path / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt_export(
            net_id="export_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=str(METADATA), config_file=files,
            use_trace=True, input_shape=[1, 1, 64, 64],
        )
    loaded = torch.jit.load(str(ts))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref = net.sample(x, S, generator=torch.Generator().manual_seed(0))  # export_seed = train.yaml's seed (0)
        torch.testing.assert_close(unstack_hypotheses(loaded(x), 2), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("where", ["centre", "corners", "empty", "all"])
def test_nifti_ordered_copies_every_voxel(where, tmp_path):
    """The arrays of a result are handed to nibabel in NIfTI's own order (Fortran), copied by their non-zero box: a
    file read back equals the array, whatever the box (a small lesion, voxels at opposite corners, none, all), for a
    stack of hypotheses (its last axis) and a float map with NaN."""
    from monai_probunet.hypotheses import _nifti_ordered

    rng = np.random.default_rng(0)
    stack = np.zeros((20, 18, 7, 4), np.uint8)
    prob = np.zeros((20, 18, 7), np.float32)
    if where == "centre":
        stack[8:12, 5:9, 3, 1:3] = 1
        prob[8:12, 5:9, 2:5] = rng.random((4, 4, 3), dtype=np.float32)
    elif where == "corners":
        stack[0, 0, 0, 0] = stack[-1, -1, -1, -1] = 1
        prob[0, -1, 0], prob[-1, 0, -1] = 0.25, np.nan
    elif where == "all":
        stack[:] = rng.integers(0, 2, stack.shape)
        prob[:] = rng.random(prob.shape, dtype=np.float32)
    view = np.moveaxis(np.ascontiguousarray(np.moveaxis(stack, -1, 0)), 0, -1)  # as a result holds it: S first
    for arr, dtype in ((stack, np.uint8), (view, np.uint8), (prob, np.float32)):
        out = _nifti_ordered(arr, dtype)
        assert out.flags.f_contiguous and out.dtype == dtype
        nib.save(nib.Nifti1Image(out, np.eye(4)), str(tmp_path / "a.nii.gz"))
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "a.nii.gz")).dataobj), arr)


def test_the_memory_check_counts_the_answered_slice_of_a_volume():
    """A volume's 2-D answer fills S hypotheses of its clicked slice (the other slices stay unallocated zeros), so
    the check counts that slice, whichever axis the slices lie along; a 2-D image as large counts whole."""
    from monai_probunet.inference_preprocess import CheckHypothesesMemoryd

    check = CheckHypothesesMemoryd("image", num_samples=16, roi_size=64, max_bytes=64 * 2**20)
    slices_last = MetaTensor(torch.zeros(1, 1, 1, 1).expand(1, 512, 512, 700), affine=torch.diag(
        torch.tensor([-0.7, -0.7, 0.625, 1.0], dtype=torch.float64)))
    slices_first = MetaTensor(torch.zeros(1, 1, 1, 1).expand(1, 700, 512, 512), affine=torch.tensor(
        [[0, -0.7, 0, 0], [0, 0, -0.7, 0], [0.625, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64))
    for volume in (slices_last, slices_first):  # 16 x 512 x 512 x 700 = 2.7 GiB, one slice 4 MiB
        assert check({"image": volume})["image"] is volume
    picture = MetaTensor(torch.zeros(1, 1, 1).expand(1, 4096, 4096), affine=torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"spatial shape \(4096, 4096\).*0\.3 GiB.*draw fewer"):
        check({"image": picture})
