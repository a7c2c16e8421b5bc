"""GED and IoU distances against hand-computed values."""

from __future__ import annotations

import importlib

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from monai_probunet.handlers import GeneralizedEnergyDistance
from monai_probunet.metrics import (
    GED_TERMS,
    GeneralizedEnergyDistanceMetric,
    distances,
    generalized_energy_distance,
    joint_iou_distance,
    pairwise_iou_distance,
)

from .conftest import REPO

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


# ------------------------------------------------------------------------------ the fast path against a per-pair loop


def _reference_distance(x: torch.Tensor, y: torch.Tensor, classes) -> torch.Tensor:
    """Per-pair, per-class loop: the definition of ``1 - mean_c IoU_c`` (classes absent from both left out)."""
    out = torch.zeros(x.shape[0], x.shape[1], y.shape[1], dtype=torch.float64)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(y.shape[1]):
                ious = []
                for c in classes:
                    u, v = x[b, i] == c, y[b, j] == c
                    union = int((u | v).sum())
                    if union:
                        ious.append(int((u & v).sum()) / union)
                out[b, i, j] = 1.0 - sum(ious) / len(ious) if ious else 0.0
    return out


def _reference_ged(samples, targets, weights=None, classes=(1,)):
    joint = torch.cat([samples.to(targets.dtype), targets], 1)
    d = _reference_distance(joint, joint, classes)
    n = samples.shape[1]
    d_ss, d_sy, d_yy = d[:, :n, :n].mean((1, 2)), d[:, :n, n:], d[:, n:, n:]
    if weights is None:
        e_sy, e_yy = d_sy.mean((1, 2)), d_yy.mean((1, 2))
    else:
        w = weights.double()
        e_sy, e_yy = (d_sy * w[:, None]).sum(2).mean(1), torch.einsum("ba,bac,bc->b", w, d_yy, w)
    return 2 * e_sy - d_ss - e_yy, e_sy, d_ss, e_yy


def _random_maps(g, shape, values, dtype, p_empty=0.3):
    """Label maps with values drawn from ``values``; about ``p_empty`` of the maps all 0 (empty masks)."""
    vals = torch.as_tensor(values)
    maps = vals[torch.randint(0, len(values), shape, generator=g)]
    empty = torch.rand(shape[:2], generator=g) < p_empty
    maps[empty] = 0
    return maps.to(dtype)


CASES = [  # (spatial shape, label values incl. an ignore label, classes, dtype)
    ((8, 8), (0, 1), (1,), torch.bool),
    ((13, 11), (0, 1), (1,), torch.bool),  # pixels not a multiple of 64: padded words
    ((130, 70), (0, 1), (1,), torch.uint8),
    ((9, 10), (0, 1, 2, 3, 255), (0, 1, 2, 3), torch.long),  # multi-class with ignore pixels
    ((4, 5, 6), (0, 1, 2, 255), (1, 2), torch.int32),  # 3-D
    ((16, 16), (0.0, 1.0, 2.0), (1, 2), torch.float32),
]


@pytest.mark.parametrize("spatial, values, classes, dtype", CASES)
def test_distances_match_a_per_pair_loop(spatial, values, classes, dtype):
    g = torch.Generator().manual_seed(1)
    x = _random_maps(g, (3, 5, *spatial), values, dtype)
    y = _random_maps(g, (3, 4, *spatial), values, dtype)
    x[0, 0] = 0  # the first image: one empty map, and a map equal to a grader's
    x[0, 1] = y[0, 2]
    torch.testing.assert_close(pairwise_iou_distance(x, y, classes).double(), _reference_distance(x, y, classes),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(pairwise_iou_distance(x, None, classes).double(), _reference_distance(x, x, classes),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(pairwise_iou_distance(y, x, classes).double(), _reference_distance(y, x, classes),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("spatial, values, classes, dtype", CASES)
def test_ged_eq6_and_eq7_match_a_per_pair_loop(spatial, values, classes, dtype):
    g = torch.Generator().manual_seed(2)
    s = _random_maps(g, (4, 6, *spatial), values, dtype)
    y = _random_maps(g, (4, 3, *spatial), values, dtype)
    w = torch.rand(4, 3, generator=g)
    w = w / w.sum(1, keepdim=True)
    for weights in (None, w):
        got = generalized_energy_distance(s, y, weights, classes)
        for a, b in zip(got, _reference_ged(s, y, weights, classes)):
            torch.testing.assert_close(a.double(), b, atol=1e-6, rtol=0)


def test_bit_path_equals_the_onehot_gram_path_exactly(monkeypatch):
    """The CPU bit path gives the same float32 distances as the one-hot matrix product (the GPU path), bit for bit,
    with the popcount table (numpy < 2), with one image per chunk and with several threads."""
    g = torch.Generator().manual_seed(3)
    x = _random_maps(g, (9, 7, 33, 31), (0, 1, 2, 255), torch.long)
    y = _random_maps(g, (9, 3, 33, 31), (0, 1, 2, 255), torch.long)
    onehot = distances.iou_distance_from_counts(*distances._onehot_counts(x, y, (1, 2)))
    gram = distances.iou_distance_from_counts(*distances._onehot_counts(x, None, (1, 2)))
    assert torch.equal(pairwise_iou_distance(x, y, (1, 2)), onehot)
    assert torch.equal(pairwise_iou_distance(x, None, (1, 2)), gram)
    monkeypatch.setattr(distances, "_HAS_BITWISE_COUNT", False)
    monkeypatch.setattr(distances, "_FIXED_CHUNK", 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(pairwise_iou_distance(x, y, (1, 2)), onehot)
        assert torch.equal(pairwise_iou_distance(x, None, (1, 2)), gram)
    finally:
        torch.set_num_threads(threads)


def test_joint_distance_is_the_gram_of_the_concatenation():
    g = torch.Generator().manual_seed(4)
    s = _random_maps(g, (3, 5, 20, 20), (0, 1), torch.bool)
    y = _random_maps(g, (3, 2, 20, 20), (0, 1), torch.bool)
    m = _random_maps(g, (3, 4, 20, 20), (0, 1), torch.bool)
    joint = torch.cat([s, y, m], 1)
    assert torch.equal(joint_iou_distance([s, y, m]), pairwise_iou_distance(joint))
    with pytest.raises(ValueError, match="spatial shape"):
        joint_iou_distance([s, torch.zeros(3, 2, 21, 20, dtype=torch.bool)])


# ------------------------------------------------------------------------------ validation handlers share one metric


def _run_validation(handlers: dict, batches: list) -> Engine:
    engine = Engine(lambda e, batch: batch)
    for name, handler in handlers.items():
        handler.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return engine


def test_term_handlers_read_the_source_and_compute_nothing():
    g = torch.Generator().manual_seed(5)
    batches = [(_random_maps(g, (3, 6, 16, 16), (0, 1), torch.long), _random_maps(g, (3, 4, 16, 16), (0, 1), torch.long))
               for _ in range(2)]
    ged = GeneralizedEnergyDistance()
    handlers = {"val_ged": ged, **{f"val_{t}": GeneralizedEnergyDistance(term=t, source=ged) for t in GED_TERMS[1:]}}
    engine = _run_validation(handlers, batches)
    terms = generalized_energy_distance(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    for t in GED_TERMS:
        assert engine.state.metrics[f"val_{t}"] == pytest.approx(getattr(terms, t).mean().item(), abs=1e-6)
        assert engine.state.metric_details[f"val_{t}"].shape == (6, 4)
    for t in GED_TERMS[1:]:
        buffer = handlers[f"val_{t}"].metric_fn.get_buffer()
        assert buffer is None or buffer.numel() == 0  # never computed its own distances
    # a second run starts from an empty buffer
    engine.run(batches[:1], max_epochs=1)
    assert engine.state.metrics["val_d_sy"] == pytest.approx(terms.d_sy[:3].mean().item(), abs=1e-6)


def test_term_handler_refuses_other_classes():
    ged = GeneralizedEnergyDistance(classes=(1, 2))
    assert GeneralizedEnergyDistance(term="d_ss", source=ged).metric_fn.classes == (1, 2)
    assert GeneralizedEnergyDistance(term="d_ss", classes=[1, 2], source=ged).source is ged
    with pytest.raises(ValueError, match="differ from the source"):
        GeneralizedEnergyDistance(term="d_ss", classes=(1,), source=ged)
    with pytest.raises(ValueError, match="term must be one of"):
        GeneralizedEnergyDistance(term="ged2")


@pytest.mark.parametrize("overrides", [[], ["scenes32.yaml"]])
def test_bundle_validation_computes_ged_once(overrides):
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle/configs" / f) for f in ["train.yaml", *overrides]])
    key = parser.get_parsed_content("validate#key_metric#val_ged")
    extra = parser.get_parsed_content("validate#additional_metrics")
    assert sorted(extra) == ["val_d_ss", "val_d_sy", "val_d_yy"]
    assert all(h.source is key and h.metric_fn.classes == key.metric_fn.classes for h in extra.values())


@pytest.mark.parametrize("shown, drawn", [(0, 4), (8, 4), (16, 1), (5, 2), (12, 3), (16, 0)])
def test_presence_part_is_the_ged_of_reader_identical_outlines(shown, drawn, monkeypatch):
    """``ged_by_readers.presence_part``: hypotheses showing a lesion in `shown` of 16 draws, each the outline every
    reader drew, against `drawn` of 4 readers: the project's GED equals 2 (p - q)^2 exactly."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("ged_by_readers")
    lesion = torch.zeros(8, 8, dtype=torch.long)
    lesion[2:5, 3:7] = 1
    hyps = torch.stack([lesion] * shown + [torch.zeros_like(lesion)] * (16 - shown))[None]
    readers = torch.stack([lesion] * drawn + [torch.zeros_like(lesion)] * (4 - drawn))[None]
    ged = float(generalized_energy_distance(hyps, readers).ged[0])
    expected = bench.presence_part({"presence_count": shown}, drawn, 16)
    assert expected == pytest.approx(2 * (shown / 16 - drawn / 4) ** 2)
    assert ged == pytest.approx(expected, abs=1e-6)


def test_share_and_outline_terms_give_the_ged_exactly(monkeypatch):
    """``share_and_outlines``: from the shown share s, the readers' share r and the mean IoUs a (shown vs drawn) and b
    (shown vs shown, self-pairs included), ``2r - 2sr(1 + a) + s^2(1 + b) - E[d(Y, Y')]`` is the project's GED."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("share_and_outlines")
    g = torch.Generator().manual_seed(0)
    for shown, drawn in ((16, 4), (5, 2), (0, 3), (9, 1), (3, 0)):
        hyps = (torch.rand(16, 12, 12, generator=g) > 0.7).long()
        hyps[shown:] = 0
        readers = (torch.rand(4, 12, 12, generator=g) > 0.6).long()
        readers[drawn:] = 0
        terms = generalized_energy_distance(hyps[None], readers[None])
        s, r, a, b = bench.share_terms(hyps, readers)
        assert (s, r) == (shown / 16, drawn / 4)
        assert bench.ged_from_terms(s, r, a, b, float(terms.d_yy[0])) == pytest.approx(float(terms.ged[0]), abs=1e-5)
    # two shown lesions, one reader's: a and b by hand
    lesion, other = torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long)
    lesion[:2, :2] = 1  # 4 pixels
    other[:2, :1] = 1  # 2 of them
    s, r, a, b = bench.share_terms(torch.stack([lesion, other, torch.zeros_like(lesion)]), torch.stack([lesion]))
    assert (s, r) == (pytest.approx(2 / 3), 1.0)
    assert a == pytest.approx((1 + 0.5) / 2) and b == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
