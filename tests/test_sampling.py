"""One case loader and one sampling loop: evaluation, calibration and the presence fit draw the same samples."""

from __future__ import annotations

import pytest
import torch

from monai_probunet.calibration import evaluate_calibration
from monai_probunet.evaluation import evaluate, presence_counts
from monai_probunet.metrics import lesion_presence_counts
from monai_probunet.sampling import ORACLE, OracleSampler, case_batches, sample_batches

from .test_evaluate import TRANSFORM, _items, _mixed_cases, _one_mode_cases, _tiny_probunet, _write_dataset


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("sampling")
    cases = _mixed_cases() + _one_mode_cases()  # 3 graders in the last case: its own group in a batch
    datalist = _write_dataset(root, {"training": cases, "validation": cases, "test": cases})
    out = _items(datalist, "test")
    for item in out:
        if "modes" in item:  # flip patterns for the calibration analysis: mode j stands for pattern j
            item["mode_patterns"] = [[j] for j in range(len(item["modes"]))]
    return out


def test_case_batches_split_where_shapes_differ_and_keep_datalist_order(items):
    groups = list(case_batches(items, TRANSFORM, batch_size=4))
    assert [[c.index for c in g] for g in groups] == [[0, 1, 2, 3], [4, 5], [6]]
    case = groups[0][1]
    assert case.graders.shape == (4, 16, 16) and case.modes.shape == (3, 16, 16) and case.patterns == [[0], [1], [2]]
    assert case.probs.tolist() == [0.25, 0.5, 0.25] and groups[0][2].modes is None
    modes_only = list(case_batches([i for i in items if "modes" in i], TRANSFORM, 16, with_graders=False))
    assert len(modes_only) == 1 and all(c.graders.shape[0] == 0 for c in modes_only[0])
    with pytest.raises(ValueError, match="test-0.*'label'"):
        list(case_batches([{"image": items[0]["image"], "case_id": "test-0"}], TRANSFORM))


def test_model_draws_do_not_depend_on_the_other_samplers_of_the_run(items):
    net = _tiny_probunet()
    alone = [s["net"] for _, _, s in sample_batches({"net": net}, items, TRANSFORM, 8, seed=5, batch_size=4)]
    both = list(sample_batches({"net": net, ORACLE: OracleSampler()}, items, TRANSFORM, 8, seed=5, batch_size=4))
    for a, (_, _, s) in zip(alone, both, strict=True):
        assert torch.equal(a, s["net"]) and s[ORACLE].shape == a.shape


def test_evaluation_calibration_and_presence_fit_draw_the_same_samples(items):
    net = _tiny_probunet()
    with_modes = [i for i in items if "modes" in i]
    kwargs = dict(seed=7, batch_size=16)
    ev = evaluate({"net": net}, with_modes, TRANSFORM, sample_counts=(8,), keep_examples=10, oracle=False, **kwargs)
    examples: list[dict] = []
    evaluate_calibration(net, with_modes, TRANSFORM, num_samples=8, classes=(1,), ignore_index=None,
                         examples=examples, num_examples=10, **kwargs)  # fmt: skip
    assert len(examples) == len(ev["net"].examples) == len(with_modes) == 6
    for e, c in zip(ev["net"].examples, examples, strict=True):
        assert e["case_id"] == c["case_id"] and torch.equal(e["samples"][:8], c["samples"])
    counts, _ = presence_counts(net, with_modes, TRANSFORM, num_samples=8, **kwargs)
    expected = [int(lesion_presence_counts(e["samples"][None, :8])[0]) for e in ev["net"].examples]
    assert counts.tolist() == expected == ev["net"].presence_counts.tolist()
