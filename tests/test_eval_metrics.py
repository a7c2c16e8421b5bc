"""Matched IoU, diversity, bootstrap / Wilcoxon and lesion-presence ambiguity against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from monai_probunet.metrics import (
    PresenceThreshold,
    bootstrap_ci,
    fit_presence_threshold,
    generalized_energy_distance,
    hungarian_matched_iou,
    lesion_presence_counts,
    presence_ambiguity,
    presence_probability,
    sample_diversity,
    wilcoxon_signed_rank,
)

# 2 x 2 masks; pixels numbered 0 1 / 2 3
P0 = torch.tensor([[1, 0], [0, 0]])  # pixel 0
P01 = torch.tensor([[1, 1], [0, 0]])  # pixels 0, 1
P2 = torch.tensor([[0, 0], [1, 0]])  # pixel 2
E = torch.zeros(2, 2, dtype=torch.long)  # empty


def _set(*masks: torch.Tensor) -> torch.Tensor:
    return torch.stack(masks).unsqueeze(0)  # 1 x N x 2 x 2


# ---------------------------------------------------------------- matched IoU and diversity


def test_matched_iou_of_a_set_with_itself_is_exactly_one():
    x = _set(P0, P01, E)
    assert hungarian_matched_iou(x, x).tolist() == [1.0]
    # replication: {P0, P01} vs {P0, P01, P0, P01} (L = 4) is still a perfect one-to-one match
    assert hungarian_matched_iou(_set(P0, P01), _set(P0, P01, P0, P01)).tolist() == [1.0]


def test_matched_iou_disjoint_sets_is_zero():
    # IoU(P0, P2) = 0 and IoU(P0, empty) = 0 (empty vs non-empty)
    assert hungarian_matched_iou(_set(P0, P0), _set(P2, E)).tolist() == [0.0]


def test_matched_iou_empty_masks():
    assert hungarian_matched_iou(_set(E, E), _set(E, E, E)).tolist() == [1.0]  # empty vs empty counts as IoU 1
    assert hungarian_matched_iou(_set(E, E), _set(P0)).tolist() == [0.0]


def test_matched_iou_replication_s4_a2_by_hand():
    # targets y1 = P0, y2 = P01; samples P0, P0, P0, P2.
    # IoU(P0, y1) = 1, IoU(P0, y2) = 1/2, IoU(P2, y1) = IoU(P2, y2) = 0.
    # L = lcm(4, 2) = 4: targets replicated to y1, y2, y1, y2, so each target takes exactly two samples.
    # best: two P0 -> y1 (1 + 1), one P0 -> y2 (1/2), P2 -> y2 (0): total 2.5 -> mean 0.625
    # (the alternative P2 -> y1 leaves P0 -> y1, y2, y2: 1 + .5 + .5 = 2.0 -> 0.5).
    # Without replication (a 4 x 2 rectangular match of 2 pairs) one would get (1 + 1/2) / 2 = 0.75.
    samples = torch.cat([_set(P0, P0, P0, P2), _set(P0, P01, P0, P01)])  # B = 2; image 2 is a perfect match
    targets = torch.cat([_set(P0, P01), _set(P01, P0)])
    torch.testing.assert_close(hungarian_matched_iou(samples, targets), torch.tensor([0.625, 1.0]))
    # order of the sets does not matter
    torch.testing.assert_close(
        hungarian_matched_iou(samples.flip(1), targets.flip(1)), torch.tensor([0.625, 1.0])
    )


def test_matched_iou_bool_input_and_errors():
    out = hungarian_matched_iou(_set(P0, P01).bool(), _set(P0).bool())
    torch.testing.assert_close(out, torch.tensor([0.75]))  # L = 2: P0 -> P0 (1), P01 -> P0 (1/2)
    with pytest.raises(ValueError, match="samples"):
        hungarian_matched_iou(P0, _set(P0))
    with pytest.raises(ValueError, match="agree in B and spatial shape"):
        hungarian_matched_iou(_set(P0), torch.zeros(1, 1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        hungarian_matched_iou(_set(P0), torch.zeros(1, 0, 2, 2, dtype=torch.long))


def test_sample_diversity_by_hand():
    # d over {P0, P01, E}: [[0, .5, 1], [.5, 0, 1], [1, 1, 0]] -> sum 5 over 9 ordered pairs (V-statistic)
    x = _set(P0, P01, E)
    torch.testing.assert_close(sample_diversity(x), torch.tensor([5 / 9]))
    torch.testing.assert_close(sample_diversity(x), generalized_energy_distance(x, _set(P0)).d_ss)
    assert sample_diversity(_set(P0)).tolist() == [0.0]  # S = 1
    assert sample_diversity(_set(E, E)).tolist() == [0.0]  # empty vs empty -> distance 0


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_constant_vector_gives_zero_width():
    mean, low, high = bootstrap_ci(np.full(17, 0.3), num_resamples=500)
    assert low == high
    assert mean == pytest.approx(0.3) and low == pytest.approx(0.3)


def test_bootstrap_is_seeded_and_matches_its_definition():
    values = np.random.default_rng(1).normal(size=25)
    a = bootstrap_ci(values, num_resamples=300, seed=7)
    b = bootstrap_ci(torch.tensor(values), num_resamples=300, seed=7)
    assert a == b
    assert bootstrap_ci(values, num_resamples=300, seed=8) != a
    # the documented definition, written out
    idx = np.random.default_rng(7).integers(0, values.size, size=(300, values.size))
    low, high = np.quantile(values[idx].mean(axis=1), [0.025, 0.975])
    assert a == pytest.approx((values.mean(), low, high), rel=1e-12, abs=1e-15)  # alpha = (1 - .95) / 2 in float


def test_bootstrap_interval_covers_mean_of_known_sample():
    # N = 1000 from N(0.5, 0.1): the 95% interval half-width is about 1.96 * 0.1 / sqrt(1000) = 0.0062
    values = np.random.default_rng(0).normal(0.5, 0.1, size=1000)
    mean, low, high = bootstrap_ci(values)  # 10000 resamples (several gather chunks)
    assert low < mean < high
    assert low < 0.5 < high
    assert 0.010 < high - low < 0.015
    _, low90, high90 = bootstrap_ci(values, confidence=0.9)
    assert low < low90 < high90 < high


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_ci([1.0, 2.0], num_resamples=0)


# ---------------------------------------------------------------- Wilcoxon


def test_wilcoxon_identical_inputs():
    x = [0.1, 0.5, 0.7]
    out = wilcoxon_signed_rank(x, x)
    assert out["p_value"] == 1.0 and out["statistic"] == 0.0
    assert out["n"] == 3 and out["n_nonzero"] == 0 and out["median_difference"] == 0.0
    assert "all paired differences are zero" in out["note"]


def test_wilcoxon_by_hand_and_matches_scipy():
    # d = a - b = [1, -2, 3, 4, 5]: ranks 1..5, W+ = 1 + 3 + 4 + 5 = 13, W- = 2 -> statistic min = 2.
    # exact null: subsets of {1..5} with rank sum <= 2 are {}, {1}, {2}: 3 / 32, two-sided p = 6 / 32 = 0.1875
    a, b = np.array([1.0, -2.0, 3.0, 4.0, 5.0]), np.zeros(5)
    out = wilcoxon_signed_rank(a, b)
    assert out["statistic"] == 2.0
    assert out["p_value"] == pytest.approx(0.1875)
    assert out["median_difference"] == 3.0 and out["n"] == 5 and out["note"] is None
    ref = stats.wilcoxon(a, b)
    assert out["statistic"] == ref.statistic and out["p_value"] == ref.pvalue


def test_wilcoxon_clear_shift_is_significant():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, size=30)
    b = a + 0.1 + rng.normal(0.0, 0.02, size=30)
    out = wilcoxon_signed_rank(torch.tensor(a), torch.tensor(b))
    assert out["p_value"] < 0.05
    assert out["median_difference"] == pytest.approx(-0.1, abs=0.02)
    with pytest.raises(ValueError, match="paired"):
        wilcoxon_signed_rank(a, b[:-1])


# ---------------------------------------------------------------- lesion presence (Appendix E)


def test_presence_counts_and_probability_by_hand():
    lab2 = torch.tensor([[2, 0], [0, 0]])  # any non-zero label is a lesion
    samples = torch.cat([_set(P0, E, P01), _set(E, E, E), _set(lab2, E, E)])  # B = 3, S = 3
    counts = lesion_presence_counts(samples)
    assert counts.dtype == torch.int64 and counts.tolist() == [2, 0, 1]
    torch.testing.assert_close(presence_probability(samples), torch.tensor([2 / 3, 0.0, 1 / 3]))
    with pytest.raises(ValueError, match="samples"):
        lesion_presence_counts(P0)


def test_presence_ambiguity_by_hand():
    graders = torch.cat(
        [
            _set(P0, P01, P2, P0),  # all four drew a lesion -> unambiguous
            _set(E, E, E, E),  # nobody drew -> unambiguous
            _set(E, P0, E, E),  # one of four drew -> ambiguous
            _set(P2, P01, P0, E),  # three of four drew -> ambiguous
        ]
    )
    assert presence_ambiguity(graders).tolist() == [False, False, True, True]
    assert presence_ambiguity(_set(P0).expand(2, 1, 2, 2)).tolist() == [False, False]  # one grader: never ambiguous


def test_fit_presence_threshold_separable():
    # S = 16. Unambiguous counts 0, 0, 1, 15, 16; ambiguous counts 5, 8, 11.
    # accuracy 1 needs 1 <= low <= 4 and 12 <= high <= 15; closest to (0, 16) is (1, 15).
    counts = torch.tensor([0, 0, 1, 15, 16, 5, 8, 11])
    ambiguous = torch.tensor([False] * 5 + [True] * 3)
    t = fit_presence_threshold(counts, ambiguous, num_samples=16)
    assert (t.low, t.high, t.accuracy, t.num_samples) == (1, 15, 1.0, 16)
    assert t.predict([0, 1, 2, 14, 15, 16]).tolist() == [False, False, True, True, False, False]
    assert t.score(counts, ambiguous) == 1.0
    assert t.score([2, 2, 0, 16], [True, False, False, True]) == 0.5


def test_fit_presence_threshold_tie_break_and_brute_force():
    # every pair predicts "unambiguous" for counts 0 and 16: all pairs tie, (0, 16) itself wins
    t = fit_presence_threshold([0, 16], [False, False], num_samples=16)
    assert (t.low, t.high) == (0, 16)
    # a non-separable random case against an explicit loop over the documented rule
    rng = np.random.default_rng(3)
    s = 8
    counts = rng.integers(0, s + 1, size=40)
    amb = rng.random(40) < 0.4
    best = None
    for low in range(s + 1):
        for high in range(low + 1, s + 1):
            correct = int((((low < counts) & (counts < high)) == amb).sum())
            key = (-correct, low**2 + (s - high) ** 2, low)
            if best is None or key < best[0]:
                best = (key, low, high, correct)
    t = fit_presence_threshold(counts, amb, num_samples=s)
    assert (t.low, t.high, t.accuracy) == (best[1], best[2], best[3] / 40)


def test_presence_threshold_json_round_trip_and_errors():
    t = fit_presence_threshold([0, 3, 16], [False, True, False], num_samples=16)
    text = json.dumps(t.to_dict())
    assert json.loads(text)["rule"] == "ambiguous iff low < count < high"
    assert PresenceThreshold.from_dict(json.loads(text)) == t
    with pytest.raises(ValueError, match="low < high"):
        PresenceThreshold(low=3, high=3, accuracy=1.0, num_samples=16)
    with pytest.raises(ValueError, match="missing"):
        PresenceThreshold.from_dict({"low": 0, "high": 2})
    with pytest.raises(ValueError, match="counts"):
        fit_presence_threshold([0, 17], [False, True], num_samples=16)
    with pytest.raises(ValueError, match="ambiguous"):
        fit_presence_threshold([0, 1], [False], num_samples=16)
    with pytest.raises(ValueError, match="num_samples"):
        fit_presence_threshold([0, 1], [False, True], num_samples=0)
    with pytest.raises(ValueError, match="counts"):
        t.predict([0.5])
