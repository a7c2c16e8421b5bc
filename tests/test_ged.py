"""GED and IoU distances against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from monai_probunet.metrics import GeneralizedEnergyDistanceMetric, generalized_energy_distance, pairwise_iou_distance

A = torch.tensor([[1, 1], [0, 0]])
B = torch.tensor([[1, 0], [0, 0]])
E = torch.zeros(2, 2, dtype=torch.long)


def _set(*masks: torch.Tensor) -> torch.Tensor:
    return torch.stack(masks).unsqueeze(0)  # 1 x N x 2 x 2


def test_iou_distance_by_hand():
    d = pairwise_iou_distance(_set(A, B, E), _set(A, B, E))[0]
    expected = torch.tensor([[0.0, 0.5, 1.0], [0.5, 0.0, 1.0], [1.0, 1.0, 0.0]])  # empty vs empty -> 0
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(pairwise_iou_distance(_set(A, B, E))[0], expected)  # y=None: the Gram path


def test_multiclass_distance_excludes_classes_absent_from_both():
    x = torch.tensor([[1, 2], [0, 0]])
    y = torch.tensor([[1, 1], [0, 0]])
    # class 1: IoU 1/2; class 2: in x only -> IoU 0; class 3: absent from both -> excluded
    d = pairwise_iou_distance(_set(x), _set(y), classes=(1, 2, 3))
    torch.testing.assert_close(d, torch.tensor([[[0.75]]]))


def test_ged_by_hand():
    # S = {A, B}, Y = {A, E}: E[d(S,Y)] = (0 + 1 + .5 + 1) / 4, E[d(S,S')] = (0 + .5 + .5 + 0) / 4, E[d(Y,Y')] = .5
    t = generalized_energy_distance(_set(A, B), _set(A, E))
    torch.testing.assert_close(t.d_sy, torch.tensor([0.625]))
    torch.testing.assert_close(t.d_ss, torch.tensor([0.25]))
    torch.testing.assert_close(t.d_yy, torch.tensor([0.5]))
    torch.testing.assert_close(t.ged, torch.tensor([0.5]))


def test_ged_all_empty_and_missed_lesion():
    assert generalized_energy_distance(_set(E, E, E), _set(E, E, E, E)).ged.item() == 0.0
    # the model never finds a lesion all graders drew: 2 * 1 - 0 - 0
    assert generalized_energy_distance(_set(E, E), _set(A, A)).ged.item() == pytest.approx(2.0)


def test_perfect_two_mode_model_scores_zero():
    # graders: half draw A, half nothing; a perfect sampler emits A and nothing at the same frequencies
    samples, graders = _set(A, E, E, A), _set(A, E, A, E)
    assert generalized_energy_distance(samples, graders).ged.item() == pytest.approx(0.0, abs=1e-7)
    # a deterministic model (always A) is worse: 2 * .5 - 0 - .5
    assert generalized_energy_distance(_set(A, A, A, A), graders).ged.item() == pytest.approx(0.5)
    # Eq. 7 with the known mixture weights
    t = generalized_energy_distance(samples, _set(A, E), target_weights=torch.tensor([0.5, 0.5]))
    assert t.ged.item() == pytest.approx(0.0, abs=1e-7)


def test_ged_is_batched_and_matches_per_image():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(5, 6, 8, 8, generator=g) > 0.6).long()
    y = (torch.rand(5, 4, 8, 8, generator=g) > 0.6).long()
    batched = generalized_energy_distance(s, y).ged
    single = torch.cat([generalized_energy_distance(s[i : i + 1], y[i : i + 1]).ged for i in range(5)])
    torch.testing.assert_close(batched, single)


def test_cumulative_metric_aggregates_and_resets():
    metric = GeneralizedEnergyDistanceMetric()
    metric(_set(A, B), _set(A, E))  # 0.5
    metric(_set(E, E), _set(A, A))  # 2.0
    assert metric.aggregate().item() == pytest.approx(1.25)
    assert metric.aggregate_terms()["d_yy"] == pytest.approx(0.25)
    metric.reset()
    with pytest.raises(ValueError, match="no buffered data"):
        metric.aggregate()


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="spatial shape"):
        generalized_energy_distance(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 5, 5))
