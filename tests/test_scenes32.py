"""The 32-mode class-flipping task: mode enumeration, Eq. 7, Appendix C calibration, scenes32, Cityscapes converter,
and the bundle override ``bundle/configs/scenes32.yaml``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from PIL import Image

from monai_probunet.data import load_datalist, prepare_dataset
from monai_probunet.data.disk_format import DatasetError
from monai_probunet.data.scenes32 import (
    FLIP_PROBS,
    FLIPS,
    IGNORE_INDEX,
    NUM_CLASSES,
    SWITCHABLE_CLASSES,
    RandClassFlipd,
    apply_flip_pattern,
    distinct_modes,
    enumerate_modes,
    pattern_index,
    render_scene,
    unflip,
)
from monai_probunet.metrics import generalized_energy_distance
from monai_probunet.metrics.calibration import CalibrationAccumulator, ModeCalibration, flip_recovery_counts
from monai_probunet.metrics.known_mixture import MaskIgnoredd, known_mixture_ged, mask_ignored, match_modes
from monai_probunet.networks import ProbUNet

from .conftest import REPO, run_bundle, train_yaml_parser

SCENES32_YAML = REPO / "bundle" / "configs" / "scenes32.yaml"
EVALUATE_YAML = REPO / "bundle" / "configs" / "evaluate.yaml"
SCENES32_EVALUATE_YAML = REPO / "bundle" / "configs" / "scenes32_evaluate.yaml"
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"


# ------------------------------------------------------------------------------------------------ the 32 modes


def test_enumerate_modes_gives_32_modes_with_the_products_of_the_flip_probabilities():
    modes = enumerate_modes()
    assert len(modes) == 32 and len({b for b, _ in modes}) == 32
    assert math.isclose(sum(p for _, p in modes), 1.0, abs_tol=1e-12)
    for j, (bits, p) in enumerate(modes):
        assert pattern_index(bits) == j
        expected = np.prod([q if b else 1 - q for b, q in zip(bits, (8 / 17, 7 / 17, 6 / 17, 5 / 17, 4 / 17))])
        assert math.isclose(p, expected, rel_tol=1e-12)
    probs = [p for _, p in modes]
    # the paper: "distinct probabilities [...] ranging from 10.9% (all unflipped) down to 0.5% (all flipped)"
    assert len({round(p, 12) for p in probs}) == 32
    assert modes[0][0] == (0,) * 5 and round(probs[0], 3) == 0.109 and probs[0] == max(probs)
    assert modes[-1][0] == (1,) * 5 and round(probs[-1], 3) == 0.005 and probs[-1] == min(probs)
    assert SWITCHABLE_CLASSES == (0, 1, 8, 11, 13, 19, 20, 21, 22, 23) and NUM_CLASSES == 24
    with pytest.raises(ValueError, match="probabilities in"):
        enumerate_modes([0.5, 1.5])


def test_distinct_modes_merge_invisible_flips():
    label = np.array([[0, 0, 1, 1], [2, 10, IGNORE_INDEX, 2]], dtype=np.uint8)  # road + sidewalk only
    modes, probs, patterns = distinct_modes(label)
    assert len(modes) == 4 and math.isclose(sum(probs), 1.0)
    assert sorted(j for g in patterns for j in g) == list(range(32))  # every pattern in exactly one mode
    np.testing.assert_array_equal(modes[0], label)  # mode 0: unflipped
    all_probs = [p for _, p in enumerate_modes()]
    for m, p, g in zip(modes, probs, patterns):
        assert math.isclose(p, sum(all_probs[j] for j in g))
        assert (m[label == IGNORE_INDEX] == IGNORE_INDEX).all() and (m[label == 2] == 2).all()
        np.testing.assert_array_equal(unflip(m), label)
    # sidewalk flipped alone: (8/17) * (1 - 4/17), summed over the invisible person/car/vegetation bits
    flipped_sidewalk = [p for m, p in zip(modes, probs) if (m == 19).any() and not (m == 23).any()]
    assert math.isclose(flipped_sidewalk[0], 8 / 17 * 13 / 17)
    assert len({m.tobytes() for m in modes}) == 4
    with pytest.raises(ValueError, match="unflipped"):
        distinct_modes(np.array([[19]]))


def test_rand_class_flipd_redraws_flips_at_the_paper_frequencies():
    rng = np.random.default_rng(0)
    _, label = render_scene(rng, 32, 64, absent_prob=0.0)
    base = torch.as_tensor(label, dtype=torch.long)
    flipped = apply_flip_pattern(base, (1, 1, 0, 0, 1))
    t = RandClassFlipd(keys="label")
    t.set_random_state(1)
    n, counts = 4000, np.zeros(5)
    for _ in range(n):
        out = t({"label": flipped.unsqueeze(0)})["label"][0]
        assert torch.equal(unflip(out), base)  # only the five classes change, ignore stays
        counts += [bool((out == dst).any()) for _, dst, _, _ in FLIPS]
    np.testing.assert_allclose(counts / n, FLIP_PROBS, atol=0.025)


# ------------------------------------------------------------------------------------------------ Eq. 7


def test_eq7_matches_a_hand_computed_case_and_masks_ignore_pixels():
    # classes 1 and 2 (class 3 is absent from every map: left out of every mean)
    y1, y2 = [1, 1, 2, 2], [1, 1, 1, 1]
    s1, s2 = [1, 1, 2, 2], [2, 2, 2, 2]
    modes = torch.tensor([[y1, y2]])
    samples = torch.tensor([[s1, s2]])
    w = torch.tensor([[0.25, 0.75]])
    # d(S1,Y1)=0, d(S1,Y2)=.75, d(S2,Y1)=.75, d(S2,Y2)=1, d(S1,S2)=.75, d(Y1,Y2)=.75
    e_sy = 0.5 * ((0 * 0.25 + 0.75 * 0.75) + (0.75 * 0.25 + 1.0 * 0.75))  # 0.75
    e_ss = (0 + 0.75 + 0.75 + 0) / 4  # 0.375
    e_yy = 2 * 0.25 * 0.75 * 0.75  # 0.28125
    terms = generalized_energy_distance(samples, modes, w, classes=(1, 2, 3))
    assert math.isclose(float(terms.ged[0]), 2 * e_sy - e_ss - e_yy, abs_tol=1e-6)  # 0.84375
    assert math.isclose(float(terms.d_sy[0]), e_sy, abs_tol=1e-6)
    assert math.isclose(float(terms.d_yy[0]), e_yy, abs_tol=1e-6)
    # a fifth pixel, ignored in the ground truth, where the samples paint class 1: masked, nothing changes
    modes_i = torch.tensor([[y1 + [IGNORE_INDEX], y2 + [IGNORE_INDEX]]])
    samples_i = torch.tensor([[s1 + [1], s2 + [1]]])
    masked = known_mixture_ged(samples_i, modes_i, w, classes=(1, 2, 3))
    assert math.isclose(float(masked.ged[0]), 0.84375, abs_tol=1e-6)
    unmasked = known_mixture_ged(samples_i, modes_i, w, classes=(1, 2, 3), ignore_index=None)
    assert abs(float(unmasked.ged[0]) - 0.84375) > 1e-3
    # the evaluator post-processing does the same masking on B x S predictions with B x A labels
    out = MaskIgnoredd()({"pred": samples_i, "label": modes_i.float()})
    assert out["pred"][0, :, 4].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    with pytest.raises(ValueError, match="sum to 1"):
        known_mixture_ged(samples, modes, torch.tensor([[0.5, 0.6]]))


def _proportional_indices(probs: list[float], num_samples: int) -> torch.Tensor:
    """Mode indices at the (rounded) true frequencies: the largest-remainder apportionment of S samples."""
    exact = np.asarray(probs) * num_samples
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: num_samples - counts.sum()]] += 1
    return torch.repeat_interleave(torch.arange(len(probs)), torch.as_tensor(counts))


def test_a_sampler_at_the_true_frequencies_is_calibrated_and_has_near_zero_ged():
    acc = CalibrationAccumulator()
    bad = CalibrationAccumulator()
    seen_merged, n_full = False, 0
    s = 400
    for k in range(6):
        _, label = render_scene(np.random.default_rng([5, k]), 32, 64, absent_prob=0.0 if k < 4 else 0.6)
        modes_np, probs, patterns = distinct_modes(label)
        seen_merged |= len(modes_np) < 32
        n_full += len(modes_np) == 32
        modes = torch.as_tensor(np.stack(modes_np), dtype=torch.long)
        idx = _proportional_indices(probs, s)[torch.randperm(s, generator=torch.Generator().manual_seed(k))]
        samples = modes[idx].clone()
        samples[:, torch.as_tensor(label) == IGNORE_INDEX] = 0  # whatever a model paints on ignore pixels is masked
        w = torch.tensor([probs])
        terms = acc.update(samples[None], modes[None], w, [patterns])
        assert abs(float(terms.ged[0])) < 5e-3
        assert torch.equal(match_modes(samples[None], modes[None])[0], idx)
        bad.update(modes[None, :1].expand(1, 16, *modes.shape[1:]), modes[None], w, [patterns])  # always mode 0
    assert seen_merged
    cal = acc.mode_calibration()
    r, _ = cal.pearson
    assert r > 0.999 and cal.modes_hit == 32 and cal.num_exact_images == n_full >= 4
    np.testing.assert_allclose(cal.frequencies, cal.true_probs, atol=3e-3)
    assert cal.exact_pearson[0] > 0.999
    pm = acc.pixel_marginals()
    np.testing.assert_allclose(pm.p_flipped, FLIP_PROBS, atol=5e-3)
    np.testing.assert_allclose(pm.p_other, 0.0)
    summary = acc.summary()
    assert abs(summary["ged"]["ged"]) < 5e-3 and summary["mode_calibration"]["modes_hit"] == 32
    back = ModeCalibration.from_dict(json.loads(json.dumps(summary["mode_calibration"])))  # as read from JSON
    np.testing.assert_allclose(back.frequencies, cal.frequencies)
    assert back.pearson == pytest.approx(cal.pearson) and back.modes_hit == 32 and back.patterns == cal.patterns
    # a deterministic model (always the unflipped map): one mode hit, far from the distribution
    b = bad.mode_calibration()
    assert b.modes_hit == 1 and bad.summary()["ged"]["ged"] > 0.1
    np.testing.assert_allclose(bad.pixel_marginals().p_flipped, 0.0)


def test_ged_from_the_first_samples_frequencies_from_all():
    _, label = render_scene(np.random.default_rng([5, 0]), 32, 64, absent_prob=0.0)
    modes_np, probs, patterns = distinct_modes(label)
    modes = torch.as_tensor(np.stack(modes_np), dtype=torch.long)
    # 16 samples of mode 0, then 48 of the least likely mode
    samples = torch.cat([modes[:1].expand(16, *modes.shape[1:]), modes[-1:].expand(48, *modes.shape[1:])])[None]
    w = torch.tensor([probs])
    acc = CalibrationAccumulator(ged_samples=16)
    terms = acc.update(samples, modes[None], w, [patterns])
    ref = known_mixture_ged(samples[:, :16], modes[None], w)
    torch.testing.assert_close(terms.ged, ref.ged)
    cal = acc.mode_calibration()
    assert cal.counts[0] == 16 and cal.counts[-1] == 48 and cal.modes_hit == 2
    assert acc.summary()["num_samples"] == 64 and acc.summary()["ged_num_samples"] == 16
    assert CalibrationAccumulator(ged_samples=100).update(samples, modes[None], w, [patterns]).ged.shape == (1,)



def _two_flip_calibration(counts, true_probs=(0.3, 0.2, 0.3, 0.2)):
    """Two flips, patterns (0,0), (0,1), (1,0), (1,1); ``counts`` from images with both flips visible."""
    c = np.asarray(counts, dtype=np.float64)
    return ModeCalibration(
        patterns=[(0, 0), (0, 1), (1, 0), (1, 1)], true_probs=np.asarray(true_probs), counts=c, exact_counts=c,
        num_images=1, num_exact_images=1, num_samples=int(c.sum()),
    )


def test_flip_marginals_and_correlation_hand_computed():
    # true: flip A on with 0.3 + 0.2 = 0.5, flip B with 0.2 + 0.2 = 0.4
    tied = _two_flip_calibration([4, 0, 0, 4])  # A and B always together: both on half the time, r = +1
    np.testing.assert_allclose(tied.flip_marginals[0], [0.5, 0.5])
    np.testing.assert_allclose(tied.flip_marginals[1], [0.5, 0.4])
    np.testing.assert_allclose(tied.flip_correlation, [[1.0, 1.0], [1.0, 1.0]])
    # (1, 3, 3, 1) / 8: P(A) = P(B) = 1/2, P(A and B) = 1/8, cov = 1/8 - 1/4, corr = -1/8 / (1/4) = -0.5
    anti = _two_flip_calibration([1, 3, 3, 1])
    np.testing.assert_allclose(anti.flip_correlation[0, 1], -0.5)
    # untied with the sampled marginals (1/2, 1/2): every pattern 1/4, no spread -> r undefined
    assert np.isnan(anti.independent_pearson[0])
    # independent flips with the true marginals: r = 1 untied and as sampled, zero correlation
    true = _two_flip_calibration([0.3, 0.2, 0.3, 0.2])
    assert true.flip_correlation[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert true.independent_pearson[0] == pytest.approx(1.0) and true.pearson[0] == pytest.approx(1.0)
    # a flip never sampled: its correlations are undefined (None in JSON), its marginal 0
    never = _two_flip_calibration([5, 5, 0, 0])
    assert never.flip_marginals[0][0] == 0.0 and np.isnan(never.flip_correlation[0, 1])
    d = json.loads(json.dumps(never.to_dict()))
    assert d["flip_correlation"][0][1] is None and d["sampled_flip_probs"] == [0.0, 0.5]
    assert d["true_flip_probs"] == pytest.approx([0.5, 0.4])

class _FlipCodec(torch.nn.Module):
    """A hand-built latent model for the posterior probe: the "image" is the unflipped label map, the posterior mean
    is the bits of the flips present in the label, the decoder applies those bits to the image (dropping the flips in
    ``deaf``: a latent that carries nothing about them)."""

    def __init__(self, deaf: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.deaf = deaf

    def posterior(self, image: torch.Tensor, seg: torch.Tensor) -> torch.distributions.Distribution:
        bits = torch.stack([(seg == dst).flatten(1).any(1) for _, dst, _, _ in FLIPS], dim=1).float()
        return torch.distributions.Independent(torch.distributions.Normal(bits, torch.ones_like(bits)), 1)

    def decode(self, image: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        maps = []
        for b in range(z.shape[0]):
            for zz in z[b]:
                bits = [0 if k in self.deaf else int(v > 0.5) for k, v in enumerate(zz.tolist())]
                lab = apply_flip_pattern(image[b, 0].long(), bits)
                maps.append(torch.where(lab == IGNORE_INDEX, 0, lab))
        logits = torch.nn.functional.one_hot(torch.stack(maps), NUM_CLASSES).movedim(-1, 1).float()
        return logits.reshape(z.shape[0], z.shape[1], *logits.shape[1:])


def test_posterior_probe_tells_encoded_from_ignored_flips():
    from monai_probunet.calibration import evaluate_posterior_flips

    # by hand: 2 flips, the second invisible (modes {00, 01} and {10, 11}); both modes decoded as mode 0
    patterns = [(0, 0), (1, 0), (0, 1), (1, 1)]
    correct, total = flip_recovery_counts([0, 0], [[0, 2], [1, 3]], patterns)
    np.testing.assert_array_equal(correct, [1, 0])
    np.testing.assert_array_equal(total, [2, 0])
    with pytest.raises(ValueError, match="mode indices"):
        flip_recovery_counts([0, 2], [[0, 2], [1, 3]], patterns)
    # two scenes with all five flips (32 modes each) and one without persons (16 modes)
    labels = [render_scene(np.random.default_rng([9, k]), 32, 64, absent_prob=0.0)[1] for k in range(3)]
    labels[2] = np.where(labels[2] == FLIPS[1][0], 2, labels[2])  # persons -> buildings
    items = []
    for lab in labels:
        modes, probs, groups = distinct_modes(lab)
        items.append(
            {"image": lab[None].astype(np.float32), "modes": modes, "mode_probs": probs, "mode_patterns": groups}
        )
    assert [len(i["modes"]) for i in items] == [32, 32, 16]

    def transform(d):
        return {"image": torch.as_tensor(d["image"]), "label": torch.as_tensor(np.stack(d["label"]))}

    exact = evaluate_posterior_flips(_FlipCodec(), items, transform)
    assert exact["flip_accuracy"] == [1.0] * 5 and exact["mode_accuracy"] == 1.0 and exact["num_modes"] == 80
    deaf = evaluate_posterior_flips(_FlipCodec(deaf=(1,)), items, transform)  # the person flip is never encoded
    assert deaf["flip_accuracy"] == [1.0, 0.5, 1.0, 1.0, 1.0]  # half of the 64 person-visible modes have it on
    assert deaf["mode_accuracy"] == pytest.approx((16 + 16 + 16) / 80)  # the person-less scene loses nothing
    with pytest.raises(TypeError, match="posterior"):
        evaluate_posterior_flips(torch.nn.Identity(), items, transform)


def test_mask_ignored_shapes():
    samples = torch.zeros(2, 3, 4, 5, dtype=torch.long)
    ref = torch.zeros(2, 4, 5, dtype=torch.long)
    ref[1, 0, 0] = IGNORE_INDEX
    out = mask_ignored(samples, ref)
    assert out[1, :, 0, 0].tolist() == [IGNORE_INDEX] * 3 and int((out == IGNORE_INDEX).sum()) == 3
    with pytest.raises(ValueError, match="does not match"):
        mask_ignored(samples, torch.zeros(2, 4, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ scenes32


SMALL_DATA = dict(num_cities=8, images_per_city=2, image_size=[32, 64], num_graders=3)


def test_scenes32_is_deterministic_cached_and_city_split(tmp_path):
    a = prepare_dataset("scenes32", tmp_path / "a", seed=2, **SMALL_DATA)
    b = prepare_dataset("scenes32", tmp_path / "b", seed=2, **SMALL_DATA)
    ja, jb = json.loads(open(a).read()), json.loads(open(b).read())
    assert ja == jb
    first = ja["training"][0]
    for key in ("image", "label", "modes"):
        paths = first[key] if isinstance(first[key], list) else [first[key]]
        for p in paths:
            assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()
    mtime = (tmp_path / "a" / "datalist.json").stat().st_mtime_ns
    assert prepare_dataset("scenes32", tmp_path / "a", seed=2, **SMALL_DATA) == a
    assert (tmp_path / "a" / "datalist.json").stat().st_mtime_ns == mtime  # cached
    cities = {s: {c["patient_id"] for c in ja[s]} for s in ("training", "validation", "test")}
    assert all(cities.values()) and not cities["training"] & cities["validation"]
    assert not cities["training"] & cities["test"] and not cities["validation"] & cities["test"]
    assert sum(len(ja[s]) for s in cities) == 16 and ja["num_classes"] == 24 and ja["ignore_index"] == 255

    import nibabel as nib

    for item in load_datalist(a, "training"):
        image = np.asarray(nib.load(item["image"]).dataobj)
        modes = np.stack([np.asarray(nib.load(p).dataobj) for p in item["modes"]])
        graders = np.stack([np.asarray(nib.load(p).dataobj) for p in item["label"]])
        assert image.shape == (32, 64, 3) and image.dtype == np.uint8 and modes.shape[1:] == (32, 64)
        assert math.isclose(sum(item["mode_probs"]), 1.0, abs_tol=1e-9)
        visible = sum(bool((modes[0] == src).any()) for src, _, _, _ in FLIPS)
        assert len(modes) == 2**visible and len({m.tobytes() for m in modes}) == len(modes)
        assert not np.isin(modes[0], [19, 20, 21, 22, 23]).any() and set(np.unique(modes)) <= set(range(24)) | {255}
        for g, j in zip(graders, item["grader_patterns"]):
            np.testing.assert_array_equal(g, apply_flip_pattern(modes[0], enumerate_modes()[j][0]))


# ------------------------------------------------------------------------------------------------ Cityscapes


def _write_cityscapes_fixture(root, rng) -> dict[str, np.ndarray]:
    """Tiny Cityscapes tree (64 x 128 images, label ids constant on 4 x 4 blocks); returns label ids per image."""
    ids_pool = [7, 8, 11, 21, 23, 24, 26, 1, 9, 33, 0, 17, 29]
    out = {}
    images = [("train", "aachen", 0), ("train", "aachen", 1), ("train", "ulm", 0), ("val", "frankfurt", 0)]
    for split, city, k in images:
        stem = f"{city}_{k:06d}_000019"
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        pool = ids_pool if k == 0 else [7, 24, 23, 1]  # image 1 of aachen: road, person, sky, ego vehicle only
        blocks = rng.choice(pool, size=(16, 32)).astype(np.uint8)
        ids = np.kron(blocks, np.ones((4, 4), np.uint8))
        Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(
            root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        )
        Image.fromarray(ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        out[stem] = ids
    return out


def test_cityscapes_converter_train_ids_flips_and_split(tmp_path):
    from preprocessing.cityscapes import LABEL_ID_TO_TRAIN_ID, label_ids_to_train_ids, main

    ids = _write_cityscapes_fixture(tmp_path / "cs", np.random.default_rng(0))
    table = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 1: 255, 9: 255, 33: 18, 0: 255, 17: 5, 29: 255}
    assert all(LABEL_ID_TO_TRAIN_ID[i] == t for i, t in table.items()) and LABEL_ID_TO_TRAIN_ID[-1] == 255
    assert label_ids_to_train_ids(np.arange(34)).tolist() == [LABEL_ID_TO_TRAIN_ID[i] for i in range(34)]
    assert sorted(t for t in set(LABEL_ID_TO_TRAIN_ID.values()) if t != 255) == list(range(19))
    out = tmp_path / "out"
    argv = ["--root", str(tmp_path / "cs"), "--out", str(out), "--size", "16", "32", "--num-graders", "5"]
    assert main(argv) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert [c["case_id"] for c in dl["training"]] == ["aachen_000000_000019", "aachen_000001_000019"]
    assert [c["case_id"] for c in dl["validation"]] == ["ulm_000000_000019"]  # the paper's held-out city
    assert [c["case_id"] for c in dl["test"]] == ["frankfurt_000000_000019"]  # official val = test

    import nibabel as nib

    for split in ("training", "validation", "test"):
        for item in load_datalist(out / "datalist.json", split):
            expected = np.vectorize(lambda i: table[int(i)])(ids[item["case_id"]][::4, ::4]).astype(np.uint8)
            modes = np.stack([np.asarray(nib.load(p).dataobj) for p in item["modes"]])
            np.testing.assert_array_equal(modes[0], expected)  # train ids, nearest down-sampling
            assert np.asarray(nib.load(item["image"]).dataobj).shape == (16, 32, 3)
            visible = [bool((expected == src).any()) for src, _, _, _ in FLIPS]
            assert len(modes) == 2 ** sum(visible)
            # one mode per pattern of the visible flips (invisible bits 0), probability = product over visible ones
            kept = [bits for bits, _ in enumerate_modes() if all(b == 0 for b, v in zip(bits, visible) if not v)]
            want = [np.prod([q if b else 1 - q for b, q, v in zip(bits, FLIP_PROBS, visible) if v]) for bits in kept]
            np.testing.assert_allclose(item["mode_probs"], want, rtol=1e-12)
            for k, j in enumerate(item["grader_patterns"]):
                grader = np.asarray(nib.load(item["label"][k]).dataobj)
                np.testing.assert_array_equal(grader, apply_flip_pattern(expected, enumerate_modes()[j][0]))
                for src, dst, _, _ in FLIPS:
                    flipped = enumerate_modes()[j][0][[f[0] for f in FLIPS].index(src)]
                    assert (grader[expected == src] == (dst if flipped else src)).all()
    assert len(dl["training"][1]["modes"]) == 4  # road and person only: 2 visible flips
    # a restart with the same settings skips finished images and writes the same datalist
    mtime = (out / "images" / "ulm_000000_000019.nii.gz").stat().st_mtime_ns
    assert main(argv) == 0
    assert json.loads((out / "datalist.json").read_text()) == dl
    assert (out / "images" / "ulm_000000_000019.nii.gz").stat().st_mtime_ns == mtime
    assert main(["--root", str(tmp_path / "missing"), "--out", str(out)]) == 2


# ---------------------------------------------------------------------------------------- Cityscapes as a folder

#: what scenes32.yaml (over train.yaml) gives the check of a folder dataset
SCENES32_CHECK = {"intensity_window": [0.0, 255.0], "num_classes": 24, "ignore_index": 255, "in_channels": 3,
                  "square_images": False}


def _converted_cityscapes(tmp_path: Path) -> Path:
    """The Cityscapes fixture converted by ``preprocessing.cityscapes`` (16 x 32, 3 graders); its output folder."""
    from preprocessing.cityscapes import main

    _write_cityscapes_fixture(tmp_path / "cs", np.random.default_rng(0))
    out = tmp_path / "out"
    assert main(["--root", str(tmp_path / "cs"), "--out", str(out), "--size", "16", "32", "--num-graders", "3"]) == 0
    return out


def test_converted_cityscapes_passes_the_folder_check_of_the_scenes32_config(tmp_path):
    out = _converted_cityscapes(tmp_path)
    datalist = str(out / "datalist.json")
    parser = train_yaml_parser("scenes32.yaml")
    keys = ("num_classes", "ignore_index", "in_channels", "square_images")
    settings = {k: parser.get_parsed_content(k) for k in keys}
    assert {"intensity_window": parser.get_parsed_content("hu_window"), **settings} == SCENES32_CHECK
    assert prepare_dataset("folder", out, **SCENES32_CHECK) == datalist
    # the documented command's datalist entry: scenes32.yaml's settings reach the check ...
    parser = train_yaml_parser("scenes32.yaml", dataset_name="folder", dataset_dir=str(out))
    assert parser.get_parsed_content("datalist") == datalist
    # ... and its training pipeline stacks what the check let through: RGB 16 x 32, train ids and 255
    transform = parser.get_parsed_content("train#preprocessing")
    batch = list_data_collate([transform(item) for item in load_datalist(datalist, "training")])
    assert tuple(batch["image"].shape) == (2, 3, 16, 32) and tuple(batch["label"].shape) == (2, 1, 16, 32)
    assert set(torch.unique(batch["label"]).tolist()) <= set(range(24)) | {255}
    assert 255 in batch["label"] and float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0
    # train.yaml's CT task refuses the same folder: RGB is not one single-channel image, train ids are not 0/1
    with pytest.raises(RuntimeError) as info:
        train_yaml_parser(dataset_name="folder", dataset_dir=str(out)).get_parsed_content("datalist")
    assert isinstance(info.value.__cause__, DatasetError)
    assert (f"training case aachen_000000_000019: image {out / 'images' / 'aachen_000000_000019.nii.gz'} is 16 x 32 "
            "x 3: expected one 2-D image per case (H x W)") in str(info.value.__cause__)


def test_a_cityscapes_mask_value_outside_the_classes_is_refused_in_one_line(tmp_path):
    import nibabel as nib

    out = _converted_cityscapes(tmp_path)
    label = out / "labels" / "aachen_000001_000019_g1.nii.gz"
    mask = nib.load(str(label))
    data = np.zeros((16, 32), np.int16)
    data[:4], data[4:8], data[8:12] = 23, 255, 24  # 23: the last class, 255: ignore, 24: no class
    nib.save(nib.Nifti1Image(data, mask.affine), str(label))
    with pytest.raises(DatasetError) as info:
        prepare_dataset("folder", out, **SCENES32_CHECK)
    assert str(info.value).splitlines() == [
        f"{out / 'datalist.json'}: 1 problem(s) in the dataset, nothing was trained:",
        (f"  training case aachen_000001_000019: label {label} holds values 0, 23, 24, 255 (24 not allowed); a "
         "grader mask must hold only the class ids 0 to 23 (num_classes 24) and 255 (ignore_index: unannotated)."),
    ]
    data[12:, :4] = -1
    nib.save(nib.Nifti1Image(data, mask.affine), str(label))
    with pytest.raises(DatasetError, match=r"holds values -1, 0, 23, 24, 255 \(-1, 24 not allowed\);"):
        prepare_dataset("folder", out, **SCENES32_CHECK)


@pytest.mark.slow
def test_bundle_trains_on_converted_cityscapes_as_scenes32_documents(tmp_path):
    out = _converted_cityscapes(tmp_path)
    proc = run_bundle("--dataset_name", "folder", "--dataset_dir", str(out), "--max_epochs", "1",
                      "--val_interval", "1", "--channels", "[8, 16, 32]", "--ckpt_dir", str(tmp_path / "models"),
                      config_file=f"['{TRAIN_YAML}', '{SCENES32_YAML}']")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    geds = {float(v) for v in re.findall(r"val_ged: ([0-9.]+)", log)}  # one validation, logged twice (rounded)
    assert geds and all(math.isfinite(g) and 0.0 < g <= 2.0 for g in geds), log[-2000:]
    net = ProbUNet(2, in_channels=3, out_channels=24, channels=(8, 16, 32), latent_dim=6, posterior_presence=True,
                   prior_covariance="full")  # fmt: skip
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))


# ------------------------------------------------------------------------------------------------ bundle


def test_cityscapes_converter_refuses_someone_elses_folder_a_file_and_unknown_cities(tmp_path, capsys):
    from preprocessing.cityscapes import main

    _write_cityscapes_fixture(tmp_path / "cs", np.random.default_rng(0))
    common = ["--root", str(tmp_path / "cs"), "--size", "16", "32"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "datalist.json").write_text('{"mine": 1}')
    (mine / "notes.txt").write_text("keep")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, needle in ((mine, "holds files preprocessing.cityscapes did not write (datalist.json, notes.txt)"),
                        (afile, "is a file, not a folder"), (afile / "out", f"cannot be created: {afile} is a file"),
                        (Path("/proc/probunet"), "cannot be written: no folder can be created in /proc")):
        assert main([*common, "--out", str(out)]) == 2
        assert needle in capsys.readouterr().err
    assert (mine / "datalist.json").read_text() == '{"mine": 1}' and sorted(p.name for p in mine.iterdir()) == [
        "datalist.json", "notes.txt"]
    assert main([*common, "--out", str(tmp_path / "o"), "--validation-cities", "nowhere"]) == 2
    assert "--validation-cities nowhere: no such city" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bundle_trains_and_evaluates_on_scenes32(tmp_path):
    data_args = [a for k, v in SMALL_DATA.items() for a in (f"--dataset_kwargs#{k}", json.dumps(v))]
    common = (*data_args, "--channels", "[8, 16, 32]", "--ckpt_dir", str(tmp_path / "models"),
              "--dataset_dir", str(tmp_path / "data"))  # fmt: skip
    cfg = f"['{TRAIN_YAML}', '{SCENES32_YAML}']"
    proc = run_bundle(*common, "--max_epochs", "2", "--val_interval", "1", config_file=cfg)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    geds = [float(v) for v in re.findall(r"val_ged: ([0-9.]+)", log)]
    assert len(geds) >= 2 and all(math.isfinite(g) and 0.0 <= g <= 2.0 for g in geds), log[-2000:]
    # RGB in, 24 classes out, class presence into the posterior's head and a full-covariance prior (scenes32.yaml's
    # posterior_presence and prior_covariance)
    net = ProbUNet(2, in_channels=3, out_channels=24, channels=(8, 16, 32), latent_dim=6, posterior_presence=True,
                   prior_covariance="full")  # fmt: skip
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    # evaluation: evaluate.yaml's metrics over the 10 switchable classes + the Fig. 5 / Appendix C analysis
    import subprocess
    import sys

    cfg = f"['{TRAIN_YAML}', '{SCENES32_YAML}', '{EVALUATE_YAML}', '{SCENES32_EVALUATE_YAML}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", cfg, *common,
           "--output_dir", str(tmp_path / "eval"), "--sample_counts", "[1, 4]", "--bootstrap_resamples", "50",
           "--calibration_samples", "4", "--num_plot_images", "1"]  # fmt: skip
    ev = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/", check=False)
    assert ev.returncode == 0, (ev.stdout + ev.stderr)[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    name = next(n for n in summary["models"] if n != "oracle")
    assert summary["models"][name]["classes"] == list(SWITCHABLE_CLASSES)
    calib = json.loads((tmp_path / "eval" / "calibration.json").read_text())
    assert set(calib["models"]) == {name, "oracle"}
    assert calib["num_samples"] == 4 and calib["ged_num_samples"] == 4  # GED at min(num_samples, S)
    # scenes32.yaml scores the weights at the end of the schedule, not the best-validation model.pt
    assert Path(calib["checkpoint"]) == tmp_path / "models" / "checkpoint_final.pt"
    assert Path(summary["checkpoint"]) == tmp_path / "models" / "checkpoint_final.pt"
    for name in calib["models"]:
        m = calib["models"][name]
        assert math.isfinite(m["ged"]["ged"]) and len(m["mode_calibration"]["patterns"]) == 32
    model = next(n for n in calib["models"] if n != "oracle")
    assert calib["models"]["oracle"]["ged"]["ged"] < calib["models"][model]["ged"]["ged"]
    probe = calib["models"][model]["posterior_probe"]  # the ProbUNet has a posterior; the oracle has none
    assert "posterior_probe" not in calib["models"]["oracle"] and len(probe["flip_accuracy"]) == 5
    assert all(v is None or 0.0 <= v <= 1.0 for v in probe["flip_accuracy"]) and probe["num_modes"] > 0
    for png in ("mode_calibration.png", "pixel_marginals.png", "calibration_samples.png"):
        assert (tmp_path / "eval" / png).is_file()


def test_compare_scores_ensemble_members_as_the_task_scores_a_model(tmp_path):
    """benchmarks/compare.py builds the ensemble from the members' checkpoints that the task's evaluation scores:
    scenes32.yaml's end-of-schedule weights, train.yaml's best-validation model.pt elsewhere."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_bench", REPO / "benchmarks" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    member = tmp_path / "member_0"
    assert compare.scored_checkpoint("unet_ensemble", "scenes32", member) == str(member / "checkpoint_final.pt")
    assert compare.scored_checkpoint("unet_ensemble", "lidc", member) == str(member / "model.pt")


def _compare_module():
    import importlib.util
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))  # compare.py imports reference_rows from beside it
    spec = importlib.util.spec_from_file_location("compare_bench", REPO / "benchmarks" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    return compare


def test_reference_rows_of_several_classes_hand_computed(tmp_path):
    """reference_rows.py with several classes: two modes A (weight 0.75) and B (0.25) that differ only where A has
    scored class 2 and B the unscored class 1, so d(A, B) = 1 - mean(IoU of class 0 = 1, of class 2 = 0) = 0.5;
    graders A, A, A, B. The vote and the most probable mode are A: Eq. 6 = Eq. 7 = 2 * 0.25 d - 2 * 0.75 * 0.25 d =
    0.125 d; nothing (every pixel the unscored class 1) is at distance 1 from both: 2 - 0.375 d. An ignore pixel
    (255 in every map) changes none of them."""
    import nibabel as nib

    compare = _compare_module()
    a = np.zeros((4, 4), np.uint8)
    a[1:3, 1:3] = 2
    a[0, 0] = IGNORE_INDEX
    b = np.where(a == 2, 1, a).astype(np.uint8)
    names = {"g0": a, "g1": a, "g2": a, "g3": b, "m0": a, "m1": b}
    for name, m in names.items():
        nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / f"{name}.nii.gz")
    item = {"image": "g0.nii.gz", "label": [f"g{i}.nii.gz" for i in range(4)], "modes": ["m0.nii.gz", "m1.nii.gz"],
            "mode_probs": [0.75, 0.25], "patient_id": "P"}  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [item], "test": [item]}))
    rows = compare._references({}, tmp_path / "datalist.json", [0, 2], IGNORE_INDEX)
    d = 0.5
    expected = {
        "reference: graders' pixel-wise majority vote repeated": (0.125 * d, 0.125 * d),
        "reference: the most probable mode repeated": (0.125 * d, 0.125 * d),
        "reference: predicting nothing": (2 - 0.375 * d, 2 - 0.375 * d),
    }
    rows = {row["label"]: row for row in rows.values()}
    assert set(rows) == set(expected)
    for label, (eq6, eq7) in expected.items():
        assert rows[label]["ged"] == pytest.approx(eq6, abs=1e-6) and rows[label]["eq7"] == pytest.approx(eq7, abs=1e-6)
    # the vote is A: a pixel-wise mode over the graders (ties: the smallest label)
    from monai_probunet.metrics.references import pixelwise_vote

    maps = torch.as_tensor(np.stack([a, a, a, b]).astype(np.int64))
    assert torch.equal(pixelwise_vote(maps), maps[0])
    assert torch.equal(pixelwise_vote(maps[2:]), torch.minimum(maps[2], maps[3]))


def test_compare_table_of_the_mode_task_holds_the_reference_rows_eq7():
    """compare.py's table of the 32-mode task: the reference rows carry their Eq. 6 GED at every S and their Eq. 7
    GED, no mode calibration; the model's own row is unchanged."""
    compare = _compare_module()
    ged = [{"S": s, "mean": 0.1 * s} for s in (1, 4, 8, 16)]
    summary = {"num_images": 2, "estimator": "V", "models": {"probunet": {"metrics": {"ged": ged}},
                                                            "oracle": {"metrics": {"ged": ged}}}}  # fmt: skip
    mode_calibration = {"pearson_r": 0.9, "modes_hit": 30, "num_patterns": 32}
    cal = {"num_samples": 128, "ged_num_samples": 16,
           "models": {m: {"ged": {"ged": 0.2}, "mode_calibration": mode_calibration} for m in ("probunet", "oracle")}}
    refs = {"most_probable_mode": {"label": "reference: the most probable mode repeated", "ged": 0.488, "eq7": 0.387}}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in compare.table({"probunet": summary}, {}, {"probunet": cal}, None, refs).splitlines()
            if line.startswith("| ")}  # fmt: skip
    no_calibration = ["–", "0.387", "–", "–", "–", "–"]  # matched IoU, Eq. 7, r, modes hit, p, minutes
    assert rows["reference: the most probable mode repeated"] == ["0.488"] * 4 + no_calibration
    assert rows["probunet"][5:8] == ["0.200", "0.900", "30/32"]
