"""Evaluation workflow: oracle, nested sample counts, writers, presence threshold, latent grid, bundle end to end."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged

from monai_probunet.bundle_utils import ConfigValueError
from monai_probunet.data import write_nifti
from monai_probunet.engines.precision import resolve_precision
from monai_probunet.evaluation import (
    ESTIMATOR,
    METRICS,
    compare,
    evaluate,
    evaluate_model,
    load_presence_threshold,
    run_evaluation,
    save_presence_threshold,
)
from monai_probunet.io_utils import OutputFolderError
from monai_probunet.model_loading import find_presence_threshold, weights_sha256
from monai_probunet.metrics import (
    PresenceThreshold,
    generalized_energy_distance,
    hungarian_matched_iou,
    lesion_presence_counts,
    sample_diversity,
)
from monai_probunet.networks import DeterministicUNet, MHeadsUNet, ProbUNet
from monai_probunet.visualize import latent_grid

from .conftest import REPO, TRAIN_YAML, run_bundle, terminal_job

SIZE = 16
TRANSFORM = Compose(
    [
        LoadImaged(keys=["image", "label"], image_only=True, ensure_channel_first=True),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]
)


def _disk(size: int, centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.uint8)


def _write_dataset(root: Path, cases: dict[str, list[dict]]) -> Path:
    """cases: split -> [{"graders": [masks], "modes": [masks] | None, "probs": [...] | None}]."""
    for sub in ("images", "labels", "modes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    datalist: dict[str, list] = {}
    for split, entries in cases.items():
        datalist[split] = []
        for k, case in enumerate(entries):
            cid = f"{split}-{k}"
            img = rng.normal(size=(SIZE, SIZE)).astype(np.float32)
            write_nifti(root / f"images/{cid}.nii.gz", img, (1.0, 1.0))
            item = {"image": f"images/{cid}.nii.gz", "label": [], "case_id": cid, "patient_id": cid}
            for g, mask in enumerate(case["graders"]):
                item["label"].append(f"labels/{cid}_g{g}.nii.gz")
                write_nifti(root / item["label"][-1], mask, (1.0, 1.0))
            if case.get("modes") is not None:
                item["modes"], item["mode_probs"] = [], list(case["probs"])
                for j, mask in enumerate(case["modes"]):
                    item["modes"].append(f"modes/{cid}_m{j}.nii.gz")
                    write_nifti(root / item["modes"][-1], mask, (1.0, 1.0))
            datalist[split].append(item)
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root / "datalist.json"


EMPTY = np.zeros((SIZE, SIZE), np.uint8)
A = _disk(SIZE, (8, 8), 3)
B = _disk(SIZE, (8, 8), 5)
C = _disk(SIZE, (4, 11), 2)


def _one_mode_cases() -> list[dict]:
    return [
        {"graders": [A] * 4, "modes": [A], "probs": [1.0]},
        {"graders": [EMPTY] * 4, "modes": [EMPTY], "probs": [1.0]},
        {"graders": [C] * 3, "modes": [C], "probs": [1.0]},  # 3 graders: its own group in a batch
    ]


def _mixed_cases() -> list[dict]:
    return [
        {"graders": [A, B, A, B], "modes": [A, B], "probs": [0.5, 0.5]},
        {"graders": [EMPTY, A, A, EMPTY], "modes": [EMPTY, A, B], "probs": [0.25, 0.5, 0.25]},
        {"graders": [C, C, EMPTY, C], "modes": None, "probs": None},  # unknown distribution
        {"graders": [B, B, B, B], "modes": [B], "probs": [1.0]},
    ]


def _items(datalist: Path, split: str) -> list[dict]:
    from monai_probunet.data import load_datalist

    return load_datalist(datalist, split)


def _tiny_probunet(latent_dim: int = 2, prior_covariance: str = "diagonal") -> ProbUNet:
    torch.manual_seed(0)
    return ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=latent_dim, num_convs=1, prior_covariance=prior_covariance)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    return _write_dataset(root, {"training": _mixed_cases(), "validation": _mixed_cases(), "test": _mixed_cases()})


# ------------------------------------------------------------------------------------------------ oracle


def test_oracle_of_one_mode_distribution_scores_zero_at_any_s(tmp_path):
    cases = _one_mode_cases()
    datalist = _write_dataset(tmp_path, {"training": cases, "validation": cases, "test": cases})
    res = evaluate_model("oracle", _items(datalist, "test"), TRANSFORM, sample_counts=(1, 2, 5, 16), batch_size=2)
    assert res.name == "oracle" and res.case_ids == ["test-0", "test-1", "test-2"]
    for metric in ("ged", "d_sy", "d_ss", "d_yy", "ged_modes", "diversity"):
        assert np.array_equal(res.values[metric], np.zeros((3, 4))), metric
    assert np.array_equal(res.values["matched_iou"], np.ones((3, 4)))
    assert res.values["presence_count"][:, -1].tolist() == [16, 0, 16]
    assert res.ambiguous.tolist() == [False, False, False]
    assert res.num_graders.tolist() == [4, 4, 3] and res.num_modes.tolist() == [1, 1, 1]


def test_oracle_draws_from_graders_without_modes_and_is_seeded(mixed):
    items = _items(mixed, "test")
    r1 = evaluate_model("oracle", items, TRANSFORM, sample_counts=(16,), seed=3, batch_size=1)
    r2 = evaluate_model("oracle", items, TRANSFORM, sample_counts=(16,), seed=3, batch_size=4)
    for metric in METRICS:  # per-image generators: batching does not change the draws
        np.testing.assert_array_equal(r1.values[metric], r2.values[metric])
    assert np.isnan(r1.values["ged_modes"][2]).all() and np.isfinite(r1.values["ged_modes"][[0, 1, 3]]).all()
    # image 2: graders C, C, empty, C -> samples are C or empty, 16 draws: presence between 0 and 16
    assert r1.ambiguous.tolist() == [False, True, True, False]


# ------------------------------------------------------------------------------------------------ nested S


def test_nested_sample_counts_match_direct_metrics(mixed):
    items = _items(mixed, "test")
    model = _tiny_probunet().eval()
    counts = (1, 3, 8)
    res = evaluate({"m": model}, items, TRANSFORM, sample_counts=counts, seed=5, batch_size=4, oracle=False)["m"]
    only8 = evaluate_model(model, items, TRANSFORM, name="m", sample_counts=(8,), seed=5, batch_size=4)
    np.testing.assert_array_equal(res.metric("ged", 8), only8.metric("ged", 8))
    # the same draws, scored directly with the metric functions
    images = torch.stack([TRANSFORM(dict(image=i["image"], label=i["label"]))["image"] for i in items]).float()
    graders = torch.stack([TRANSFORM(dict(image=i["image"], label=i["label"]))["label"] for i in items]).long()
    with torch.no_grad():
        samples = model.sample(images, 8, generator=torch.Generator().manual_seed(5)).argmax(2)
    for k, s in enumerate(counts):
        direct = generalized_energy_distance(samples[:, :s], graders)
        np.testing.assert_allclose(res.values["ged"][:, k], direct.ged.double().numpy(), atol=1e-6)
        np.testing.assert_allclose(res.values["d_yy"][:, k], direct.d_yy.double().numpy(), atol=1e-6)
        np.testing.assert_allclose(
            res.values["diversity"][:, k], sample_diversity(samples[:, :s]).double().numpy(), atol=1e-6
        )
        np.testing.assert_allclose(
            res.values["matched_iou"][:, k], hungarian_matched_iou(samples[:, :s], graders).numpy(), atol=1e-6
        )
        assert res.values["presence_count"][:, k].tolist() == lesion_presence_counts(samples[:, :s]).tolist()
        # Eq. 7 vs the known modes (image 0: {A, B} at 1/2 each)
        modes0 = torch.stack([torch.as_tensor(A), torch.as_tensor(B)]).long().unsqueeze(0)
        eq7 = generalized_energy_distance(samples[:1, :s], modes0, torch.tensor([[0.5, 0.5]]))
        assert res.values["ged_modes"][0, k] == pytest.approx(float(eq7.ged), abs=1e-6)
    # nested: a larger S never changes the first draws, d_yy does not depend on S
    assert np.allclose(res.values["d_yy"], res.values["d_yy"][:, :1])
    assert res.presence_counts.tolist() == lesion_presence_counts(samples).tolist()  # presence at min(16, 8) = 8


def test_bad_arguments_raise_clear_errors(mixed):
    items = _items(mixed, "test")
    with pytest.raises(ValueError, match="max_samples"):
        evaluate_model("oracle", items, TRANSFORM, sample_counts=(1, 16), max_samples=8)
    with pytest.raises(ValueError, match="positive integers"):
        evaluate_model("oracle", items, TRANSFORM, sample_counts=(0, 4))
    bad = [dict(items[0], mode_probs=[1.0])]
    with pytest.raises(ValueError, match="'modes' .* and 'mode_probs'"):
        evaluate_model("oracle", bad, TRANSFORM)


def test_compare_is_paired_wilcoxon(mixed):
    items = _items(mixed, "test")
    res = evaluate({"m": _tiny_probunet()}, items, TRANSFORM, sample_counts=(1, 4), batch_size=4)
    out = compare(res["m"], res["oracle"], "ged", 4)
    assert out["a"] == "m" and out["b"] == "oracle" and out["S"] == 4 and out["n"] == 4
    assert 0.0 <= out["p_value"] <= 1.0
    assert out["mean_a"] == pytest.approx(res["m"].metric("ged", 4).mean())
    with pytest.raises(ValueError, match="S = 16 was not evaluated"):
        compare(res["m"], res["oracle"], "ged", 16)


# ------------------------------------------------------------------------------------------------ writers


def test_run_evaluation_writes_csv_json_pngs_and_threshold(mixed, tmp_path):
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(_tiny_probunet().state_dict(), ckpt)
    out = tmp_path / "eval"
    summary = run_evaluation(
        _tiny_probunet(), mixed, TRANSFORM, out, ckpt_path=ckpt, sample_counts=(1, 4, 8), batch_size=3,
        num_plot_images=2, bootstrap_resamples=200,
    )
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2 * 4 * 3  # (model + oracle) x images x S
    header = ["model", "split", "case_id", "index", "S", *METRICS, "ambiguous", "num_graders", "num_modes"]
    assert list(rows[0]) == header
    assert {r["model"] for r in rows} == {"probunet", "oracle"} and {r["S"] for r in rows} == {"1", "4", "8"}
    assert [r["ged_modes"] for r in rows if r["case_id"] == "test-2"] == ["nan"] * 6
    data = json.loads((out / "summary.json").read_text())
    assert data["estimator"] == ESTIMATOR == "squared GED, V-statistic, d = 1 - IoU, empty-empty = 0"
    assert data["sample_counts"] == [1, 4, 8] and data["split"] == "test" and data["num_images"] == 4
    assert data["precision"] == "fp32"  # run_evaluation's default; `auto` is recorded as what it resolved to
    assert data == summary | {"comparisons": data["comparisons"]}  # JSON-safe copy of the returned summary
    for name in ("probunet", "oracle"):
        s = data["models"][name]
        assert s["estimator"] == ESTIMATOR and s["sample_counts"] == [1, 4, 8]
        ged = s["metrics"]["ged"]
        assert [e["S"] for e in ged] == [1, 4, 8]
        assert all(e["ci_low"] <= e["mean"] <= e["ci_high"] for e in ged)
        assert s["metrics"]["ged_modes"][0]["n"] == 3  # image 2 has no modes
        p = s["presence"]
        assert p["num_samples"] == 8 and p["fitted_on"] == "validation" and 0 <= p["test_accuracy"] <= 1
    assert [c["S"] for c in data["comparisons"]] == [1, 4, 8] and data["comparisons"][0]["b"] == "oracle"
    # the reference rows, hand-computed (A inside B, r = d(A, B)): per image the vote >= 2 of 4 is B, A, C, B and
    # scores r / 2, 0.5, 0.125, 0; >= 3 of 4 is A, nothing, C, B, the same; nothing scores 2 - E[d(Y, Y')]; against
    # the known modes (images 0, 1, 3) the vote >= 2 scores r / 2, 0.125 + r / 4, 0
    r = 1 - A.sum() / B.sum()
    refs = data["references"]
    assert set(refs) == {"majority_vote>=2", "majority_vote>=3", "empty"}
    assert refs["majority_vote>=3"]["label"] == "graders' majority vote (>= 3 of 4)"
    for k in (2, 3):
        assert refs[f"majority_vote>={k}"]["ged"] == pytest.approx(np.mean([r / 2, 0.5, 0.125, 0.0]), abs=1e-6)
    assert refs["majority_vote>=2"]["ged_eq7"] == pytest.approx(np.mean([r / 2, 0.125 + r / 4, 0.0]), abs=1e-6)
    assert refs["empty"]["ged"] == pytest.approx(np.mean([2 - r / 2, 0.5, 1.125, 2.0]), abs=1e-6)
    # the presence rule: in output_dir only (the checkpoint's folder is left alone), round-trips
    assert not (ckpt.parent / "presence_threshold.json").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".png")) == [
        "per_image.csv", "presence_threshold.json", "summary.json"]  # no temporary file left behind
    for path in (out / "presence_threshold.json",):
        t = load_presence_threshold(path)
        assert t.to_dict() == PresenceThreshold.from_dict(data["models"]["probunet"]["presence"]["threshold"]).to_dict()
        assert json.loads(path.read_text())["test_accuracy"] == data["models"]["probunet"]["presence"]["test_accuracy"]
    for png in ("ged_vs_samples", "presence_histogram_probunet", "presence_histogram_oracle", "samples", "latent_grid"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png


def test_run_evaluation_of_a_unet_ensemble(mixed, tmp_path):
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(tmp_path / f"member_{i}.pt")
        torch.save(DeterministicUNet(2, 1, 2, channels=(4, 8), num_convs=1).state_dict(), paths[-1])
    template = DeterministicUNet(2, 1, 2, channels=(4, 8), num_convs=1)
    summary = run_evaluation(
        template, mixed, TRANSFORM, tmp_path / "eval", ensemble_ckpts=paths, sample_counts=(1, 2),
        bootstrap_resamples=100, num_plot_images=1, precision="auto",
    )
    assert summary["precision"] == resolve_precision("auto", "cpu") and summary["precision"] in ("fp32", "bf16")
    assert set(summary["models"]) == {"unet_ensemble2", "oracle"} and summary["checkpoint"] == [str(p) for p in paths]
    assert (tmp_path / "eval" / "presence_threshold.json").is_file()
    assert not (tmp_path / "presence_threshold.json").exists()  # no single checkpoint to sit next to
    with pytest.raises(FileNotFoundError, match="member_9.pt"):
        run_evaluation(template, mixed, TRANSFORM, tmp_path / "e2", ensemble_ckpts=[tmp_path / "member_9.pt"])
    # one path where a list belongs (`--ensemble_ckpts a/model.pt`): refused as such, not as 22 one-letter members
    for one in (str(paths[0]), paths[0]):
        with pytest.raises(ConfigValueError, match=rf"^--ensemble_ckpts: expected a list of member checkpoints .*, "
                                                   rf"got '{paths[0]}'\.$"):
            run_evaluation(template, mixed, TRANSFORM, tmp_path / "e2", ensemble_ckpts=one)
    assert not (tmp_path / "e2").exists()


def test_missing_checkpoint_names_the_path(mixed, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pt")):
        run_evaluation(_tiny_probunet(), mixed, TRANSFORM, tmp_path / "e", ckpt_path=tmp_path / "nope.pt")


def test_presence_threshold_json_round_trip(tmp_path):
    t = PresenceThreshold(low=2, high=14, accuracy=0.75, num_samples=16)
    path = save_presence_threshold(t, tmp_path / "m" / "presence_threshold.json", test_accuracy=0.7, model="x")
    back = load_presence_threshold(path)
    assert back == t and back.predict([0, 3, 14]).tolist() == [False, True, False]
    data = json.loads(path.read_text())
    assert data["rule"] == "ambiguous iff low < count < high" and data["test_accuracy"] == 0.7
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_presence_threshold(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"low": 1}))
    with pytest.raises(ValueError, match="bad.json"):
        load_presence_threshold(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------------ latent grid


def test_weights_hash_is_the_same_for_weights_saved_channels_last(tmp_path):
    """A model trained channels-last saves channels-last weights (its 1x1 kernels with a last stride above 1): they
    hash, and hash as the same weights saved channels-first, so the presence rule fitted for one is the other's."""
    net = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2)
    torch.save(net.state_dict(), tmp_path / "first.pt")
    torch.save(net.to(memory_format=torch.channels_last).state_dict(), tmp_path / "last.pt")
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert any(t.ndim == 4 and t.shape[-1] == 1 and t.stride(-1) > 1 for t in saved.values())
    assert weights_sha256(tmp_path / "last.pt") == weights_sha256(tmp_path / "first.pt")
    first_key = next(iter(saved))
    torch.save({**saved, first_key: saved[first_key] + 1e-3}, tmp_path / "changed.pt")
    assert weights_sha256(tmp_path / "changed.pt") != weights_sha256(tmp_path / "first.pt")


def test_latent_grid_shape_png_and_error(tmp_path):
    model = _tiny_probunet(latent_dim=2)
    image = torch.randn(1, SIZE, SIZE)
    graders = torch.stack([torch.as_tensor(A), torch.as_tensor(B)])
    grid = latent_grid(model, image, tmp_path / "grid.png", extent=2.0, steps=5, graders=graders)
    assert grid.shape == (5, 5, SIZE, SIZE) and grid.dtype == np.int64
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    # the centre cell decodes the prior mean
    with torch.no_grad():
        mean = model.sample(image.unsqueeze(0), 1, use_prior_mean=True).argmax(2)[0, 0]
    assert np.array_equal(grid[2, 2], mean.numpy())
    with pytest.raises(ValueError, match="latent_dim == 2"):
        latent_grid(_tiny_probunet(latent_dim=3), image)


def test_latent_grid_of_a_full_covariance_prior_is_in_whitened_units():
    model = _tiny_probunet(latent_dim=2, prior_covariance="full").eval()
    with torch.no_grad():
        model.prior_net.head.bias[4] = 1.5  # the entry below L's diagonal: z0 and z1 correlated under the prior
    image = torch.randn(1, SIZE, SIZE)
    grid = latent_grid(model, image, extent=2.0, steps=5)
    with torch.no_grad():
        mu, L = model.prior_loc_scale_tril(image.unsqueeze(0))
        assert abs(L[0, 1, 0].item()) > 1.0
        z = mu[0] + L[0] @ torch.tensor([1.0, -2.0])  # cell [i, j] = (t_j, t_i) in the prior's whitened units
        cell = model.decode(image.unsqueeze(0), z.view(1, 1, 2)).argmax(2)[0, 0]
    assert np.array_equal(grid[0, 3], cell.numpy())


# ------------------------------------------------------------------------------------------------ bundle


def _bundle(run_id: str, config_files: list[Path], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str([str(f) for f in config_files])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=600, cwd="/", env=env, check=False)



def test_split_options_name_the_key_and_null_skips_the_presence_rule(mixed, tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save(_tiny_probunet().state_dict(), ckpt)
    common = dict(ckpt_path=ckpt, model_name="probunet", sample_counts=(1, 2), bootstrap_resamples=100)
    for split in ("null", "None", None):  # the bundle CLI passes YAML's null as a string
        out = tmp_path / f"eval_{split}"
        summary = run_evaluation(_tiny_probunet(), mixed, TRANSFORM, out, threshold_split=split, **common)
        assert "fitted_on" not in summary["models"]["probunet"]["presence"]
        assert summary["presence_threshold_files"] == []
        assert not (out / "presence_threshold.json").exists()
    for key, value in (("eval_split", "tset"), ("threshold_split", "val")):
        with pytest.raises(ConfigValueError, match=f"^--{key}: expected one of training, validation, test.*{value}"):
            run_evaluation(_tiny_probunet(), mixed, TRANSFORM, tmp_path / "bad", **{key: value}, **common)
    # counts as the bundle command passes them (--sample_counts 16 is the number 16): MONAI's traceback before
    for key, value, said in (("sample_counts", 16, "a list of whole numbers >= 1"),
                             ("sample_counts", [0, 16], "a list of whole numbers >= 1"),
                             ("sample_counts", "1,4", "a list of whole numbers >= 1"),
                             ("batch_size", 0, "a whole number >= 1"), ("num_plot_images", -1, "a whole number >= 0"),
                             ("bootstrap_resamples", 2.5, "a whole number >= 1")):  # fmt: skip
        option = {"batch_size": "eval_batch_size"}.get(key, key)
        with pytest.raises(ConfigValueError, match=rf"^--{option}: expected {said}.*, got {re.escape(repr(value))}\.$"):
            run_evaluation(_tiny_probunet(), mixed, TRANSFORM, tmp_path / "bad", **{**common, key: value})
    assert not (tmp_path / "bad").exists()  # checked before anything is loaded or written


def test_output_dir_of_someone_else_is_refused_and_an_earlier_evaluation_replaced(mixed, tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save(_tiny_probunet().state_dict(), ckpt)
    common = dict(ckpt_path=ckpt, model_name="probunet", sample_counts=(1, 2), bootstrap_resamples=100)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"mine": true}')  # the user's own files, with the evaluation's names
    (mine / "per_image.csv").write_text("mine\n")
    with pytest.raises(OutputFolderError, match=f"--output_dir {mine} is a folder holding files this program did"):
        run_evaluation(_tiny_probunet(), mixed, TRANSFORM, mine, **common)
    assert (mine / "summary.json").read_text() == '{"mine": true}' and (mine / "per_image.csv").read_text() == "mine\n"
    assert sorted(p.name for p in mine.iterdir()) == ["per_image.csv", "summary.json"]

    out = tmp_path / "eval"
    first = run_evaluation(_tiny_probunet(), mixed, TRANSFORM, out, **common)
    written = sorted(p.name for p in out.iterdir())
    assert "summary.json" in written and "presence_threshold.json" in written
    assert first["presence_threshold_files"] == [str(out / "presence_threshold.json")]
    again = run_evaluation(_tiny_probunet(), mixed, TRANSFORM, out, **{**common, "sample_counts": (1, 2, 4)})
    assert sorted(p.name for p in out.iterdir()) == written and again["sample_counts"] == [1, 2, 4]
    assert json.loads((out / "summary.json").read_text())["sample_counts"] == [1, 2, 4]
    (out / "notes.txt").write_text("keep")  # a file of the user's beside an evaluation: the folder is not ours
    with pytest.raises(OutputFolderError, match="left untouched"):
        run_evaluation(_tiny_probunet(), mixed, TRANSFORM, out, **common)
    assert (out / "notes.txt").read_text() == "keep" and json.loads((out / "summary.json").read_text()) == again


@pytest.mark.slow
def test_bundle_evaluate_end_to_end(tmp_path):
    small = [
        "--dataset_name", "shapes",
        "--dataset_kwargs", "{'num_patients': 12, 'image_size': 32}",
        "--channels", "[8, 16, 32]",
        "--latent_dim", "2",
        "--max_epochs", "1",
        "--val_interval", "1",
        "--ckpt_dir", str(tmp_path / "models"),
        "--dataset_dir", str(tmp_path / "data"),
    ]  # fmt: skip
    proc = run_bundle(*small)  # ~10 s
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    logs = proc.stdout + proc.stderr
    evaluate_yaml = REPO / "bundle" / "configs" / "evaluate.yaml"
    out = tmp_path / "eval"
    proc = _bundle(
        "evaluating", [TRAIN_YAML, evaluate_yaml], *small, "--output_dir", str(out), "--bootstrap_resamples", "500"
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    logs += proc.stdout + proc.stderr
    assert "nvImageCodec" not in logs  # MONAI's note on its absent GPU decoder, from every LoadImage: quiet
    data = json.loads((out / "summary.json").read_text())
    assert data["estimator"] == ESTIMATOR and data["sample_counts"] == [1, 4, 8, 16]
    assert set(data["models"]) == {"probunet", "oracle"}
    n = data["num_images"]
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2 * n * 4 and all(0.0 <= float(r["ged"]) <= 2.0 for r in rows)
    assert all(np.isfinite(float(r["ged_modes"])) for r in rows)  # built-in data knows its modes
    oracle_ged = data["models"]["oracle"]["metrics"]["ged_modes"]
    assert oracle_ged[-1]["mean"] < 0.2  # 16 draws from the truth are close to it under Eq. 7
    threshold = load_presence_threshold(out / "presence_threshold.json")
    assert threshold.num_samples == 16
    assert not (tmp_path / "models" / "presence_threshold.json").exists()  # written only when asked
    for png in ("ged_vs_samples", "presence_histogram_probunet", "presence_histogram_oracle", "samples", "latent_grid"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
    # a baseline: its override file before evaluate.yaml picks network_def and ckpt_dir (an untrained M-Heads here)
    mheads_dir = tmp_path / "mheads"
    mheads_dir.mkdir()
    torch.save(MHeadsUNet(2, 1, 2, channels=(8, 16, 32), num_heads=16).state_dict(), mheads_dir / "model.pt")
    mheads_yaml = REPO / "bundle" / "configs" / "baselines" / "mheads.yaml"
    proc = _bundle(
        "evaluating", [TRAIN_YAML, mheads_yaml, evaluate_yaml], *small, "--ckpt_dir", str(mheads_dir),
        "--output_dir", str(tmp_path / "eval_mheads"), "--sample_counts", "[1, 4]", "--bootstrap_resamples", "100",
        "--save_presence_threshold_to", str(mheads_dir / "presence_threshold.json"),  # asked: written there too
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    data = json.loads((tmp_path / "eval_mheads" / "summary.json").read_text())
    assert set(data["models"]) == {"mheads", "oracle"} and data["sample_counts"] == [1, 4]
    asked = load_presence_threshold(mheads_dir / "presence_threshold.json")
    assert asked == load_presence_threshold(tmp_path / "eval_mheads" / "presence_threshold.json")
    # the rule names the weights it was fitted for: once the folder's model is retrained it is not used any more
    fitted_for = json.loads((mheads_dir / "presence_threshold.json").read_text())["weights_sha256"]
    assert fitted_for == weights_sha256(mheads_dir / "model.pt")
    assert find_presence_threshold(mheads_dir / "model.pt") == asked
    resaved = torch.load(mheads_dir / "model.pt", weights_only=True)  # the same weights saved again: still its rule
    torch.save(dict(reversed(list(resaved.items()))), tmp_path / "resaved.pt")
    assert (tmp_path / "resaved.pt").read_bytes() != (mheads_dir / "model.pt").read_bytes()
    assert weights_sha256(tmp_path / "resaved.pt") == fitted_for
    torch.save(MHeadsUNet(2, 1, 2, channels=(8, 16, 32), num_heads=16).state_dict(), mheads_dir / "retrained.pt")
    (mheads_dir / "retrained.pt").replace(mheads_dir / "model.pt")
    with pytest.warns(UserWarning, match=r"was fitted for other weights than .*model\.pt \(retrained since\), so the "
                      r"fallback presence rule is used; refit it: .* --save_presence_threshold_to"):
        assert find_presence_threshold(mheads_dir / "model.pt") is None
    # a file of the user's there is never replaced: one line, exit 2, before any evaluation
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    proc = _bundle(
        "evaluating", [TRAIN_YAML, mheads_yaml, evaluate_yaml], *small, "--ckpt_dir", str(mheads_dir),
        "--output_dir", str(tmp_path / "eval_notes"), "--save_presence_threshold_to", str(notes),
    )
    assert proc.returncode == 2 and f"--save_presence_threshold_to {notes}: the file exists and is not a presence " \
        "rule this program wrote" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert notes.read_text() == '{"my": "notes"}' and not (tmp_path / "eval_notes").exists()
    # nor is a rule asked for where it cannot be written evaluated first and lost at the end
    proc = _bundle(
        "evaluating", [TRAIN_YAML, mheads_yaml, evaluate_yaml], *small, "--ckpt_dir", str(mheads_dir),
        "--output_dir", str(tmp_path / "eval_notes"), "--save_presence_threshold_to", str(notes / "rule.json"),
    )
    assert proc.returncode == 2 and f"--save_presence_threshold_to {notes / 'rule.json'}: its folder {notes} is a " \
        "file, not a folder." in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert not (tmp_path / "eval_notes").exists()
    assert not (tmp_path / "eval_mheads" / "latent_grid.png").exists()
    # a missing checkpoint fails with the path in the message
    proc = _bundle(
        "evaluating", [TRAIN_YAML, evaluate_yaml], *small, "--ckpt_path", str(tmp_path / "none.pt"),
        "--output_dir", str(tmp_path / "eval_none"),
    )  # fmt: skip
    assert proc.returncode != 0 and f"checkpoint {tmp_path / 'none.pt'} does not exist" in proc.stdout + proc.stderr


class _AllLesion(torch.nn.Module):
    """A sampler that paints class 1 on every pixel of every sample (logits ``B x S x 2 x H x W``)."""

    def sample(self, image: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
        b, _, h, w = image.shape
        logits = torch.zeros(b, num_samples, 2, h, w)
        logits[:, :, 1] = 1.0
        return logits


def test_ignore_index_masks_sampled_pixels_in_unannotated_regions(tmp_path):
    disk = _disk(SIZE, (8, 12), 2.5)  # inside the annotated right half
    grader = disk.copy()
    grader[:, : SIZE // 2] = 255  # left half unannotated
    case = [{"graders": [grader] * 2, "modes": None, "probs": None}]
    datalist = _write_dataset(tmp_path, {"training": case, "validation": case, "test": case})
    items = _items(datalist, "test")
    n_disk, half = int(disk.sum()), SIZE * SIZE // 2
    kw = dict(sample_counts=(1, 4), oracle=False, classes=(1,))
    # every sample and grader identical: GED = 2 d(S, Y) = 2 (1 - |disk| / |class-1 pixels of the sample|)
    masked = evaluate({"all": _AllLesion()}, items, TRANSFORM, ignore_index=255, **kw)["all"]
    np.testing.assert_allclose(masked.metric("ged"), 2 * (1 - n_disk / half), atol=1e-9)
    unmasked = evaluate({"all": _AllLesion()}, items, TRANSFORM, **kw)["all"]
    np.testing.assert_allclose(unmasked.metric("ged"), 2 * (1 - n_disk / (2 * half)), atol=1e-9)


def test_multi_class_evaluation_skips_the_lesion_presence_rule(mixed, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(ProbUNet(2, 1, 3, channels=(4, 8), latent_dim=2, num_convs=1).state_dict(), ckpt)
    net = ProbUNet(2, 1, 3, channels=(4, 8), latent_dim=2, num_convs=1)
    summary = run_evaluation(
        net, mixed, TRANSFORM, tmp_path / "eval", ckpt_path=ckpt, model_name="three", sample_counts=(1, 2),
        num_classes=3, bootstrap_resamples=100, num_plot_images=1,
    )
    assert "test_accuracy" not in summary["models"]["three"]["presence"]
    assert summary["presence_threshold_files"] == []
    assert not list((tmp_path / "eval").glob("presence_histogram_*.png"))
    for name in ("summary.json", "ged_vs_samples.png", "samples.png"):  # samples.png in class colours
        assert (tmp_path / "eval" / name).is_file()


@pytest.mark.slow
def test_compare_report_writes_table_with_wilcoxon_and_figure(mixed, tmp_path):
    """benchmarks/compare.py --report: the results table (oracle and reference rows, p-values vs probunet), the GED
    figure, with --validation a table of the same models on the validation split and with --heldout one on another
    dataset's test split."""
    out = tmp_path / "compare"
    (out / "data").parent.mkdir(parents=True)
    (out / "data").symlink_to(mixed.parent)  # the dataset compare.py generated: its test split is `mixed`'s
    cases = {"training": _mixed_cases(), "validation": _mixed_cases(), "test": _mixed_cases()[1:]}
    heldout = _write_dataset(tmp_path / "heldout", cases).parent
    nets = {"probunet": _tiny_probunet(), "unet": DeterministicUNet(2, 1, 2, channels=(4, 8), num_convs=1)}
    for name, net in nets.items():
        torch.save(net.state_dict(), tmp_path / f"{name}.pt")
        for evals, datalist, split in (("eval", mixed, "test"), ("eval_validation", mixed, "validation"),
                                       ("eval_heldout", heldout / "datalist.json", "test")):  # fmt: skip
            run_evaluation(
                net, datalist, TRANSFORM, out / evals / name, ckpt_path=tmp_path / f"{name}.pt", model_name=name,
                sample_counts=(1, 4, 8, 16), bootstrap_resamples=50, num_plot_images=0, eval_split=split,
                threshold_split=None if split == "validation" else "validation",
            )
    (out / "timings.json").write_text(json.dumps({"probunet": 120.0, "unet": 60.0}))
    (out / "comparison.json").write_text("{}")  # what marks a comparison's folder
    cmd = [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--report", "--out", str(out),
           "--models", "probunet", "unet"]  # fmt: skip
    proc = subprocess.run([*cmd, "--validation", "--heldout", str(heldout)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = (out / "results.md").read_text().split("\n\n")  # each table: its title, a blank line, its rows
    titles, tables = parts[0::2], parts[1::2]
    assert [t.split(",")[0] for t in titles] == ["Test split", "Validation split", f"{heldout}: test split"]
    test_table, validation_table, heldout_table = tables
    rows = _table_rows(test_table)
    # the reference rows' known answers (A inside B, r = 1 - |A| / |B|; d(empty, a lesion) = 1): per test image
    # [A, B, A, B], [-, A, A, -], [C, C, -, C], [B, B, B, B] the vote (>= 2 or >= 3 of 4) is B or A, A or -, C, B
    r = 1 - A.sum() / B.sum()
    vote, nothing = np.mean([r / 2, 0.5, 0.125, 0.0]), np.mean([2 - r / 2, 0.5, 1.125, 2.0])
    for k in (2, 3):
        assert rows[f"reference: graders' majority vote (>= {k} of 4) repeated"][:4] == [f"{vote:.3f}"] * 4
    assert rows["reference: predicting nothing"][:4] == [f"{nothing:.3f}"] * 4
    assert set(rows) == {"model", "probunet", "unet", "oracle", "reference: predicting nothing",
                         *(f"reference: graders' majority vote (>= {k} of 4) repeated" for k in (2, 3))}  # fmt: skip
    summary = json.loads((out / "eval" / "unet" / "summary.json").read_text())
    ged16 = next(e["mean"] for e in summary["models"]["unet"]["metrics"]["ged"] if e["S"] == 16)
    assert rows["unet"][3] == f"{ged16:.3f}" and rows["unet"][-1] == "1.0" and rows["probunet"][-1] == "2.0"
    test_table_unet_ged16 = rows["unet"][3]
    a = _per_image(out / "eval" / "unet", "unet")
    b = _per_image(out / "eval" / "probunet", "probunet")
    from scipy.stats import wilcoxon

    assert float(rows["unet"][-2]) == pytest.approx(wilcoxon(a, b).pvalue, rel=0.05)
    assert (out / "ged_vs_samples.png").is_file()
    # the held-out table: the same models scored on its test split (3 images), its own reference rows
    held = _table_rows(heldout_table)
    summary = json.loads((out / "eval_heldout" / "unet" / "summary.json").read_text())
    ged16 = next(e["mean"] for e in summary["models"]["unet"]["metrics"]["ged"] if e["S"] == 16)
    assert summary["num_images"] == 3 and held["unet"][3] == f"{ged16:.3f}"
    assert held["reference: predicting nothing"][3] == f"{np.mean([0.5, 1.125, 2.0]):.3f}"
    # the validation table: the same models on the validation split (here the test split's cases), no presence rule
    val = _table_rows(validation_table)
    summary = json.loads((out / "eval_validation" / "unet" / "summary.json").read_text())
    ged16 = next(e["mean"] for e in summary["models"]["unet"]["metrics"]["ged"] if e["S"] == 16)
    assert summary["split"] == "validation" and val["unet"][3] == f"{ged16:.3f}" and val["unet"][5] == "–"
    assert val["reference: graders' majority vote (>= 2 of 4) repeated"][3] == f"{vote:.3f}"
    missing = subprocess.run([*cmd[:-2], "mheads"], capture_output=True, text=True, timeout=300, check=False)
    assert missing.returncode != 0 and "mheads" in missing.stderr and "summary.json" in missing.stderr
    # without --models: the models the comparison ran (comparison.json), not every model compare.py knows
    (out / "comparison.json").write_text(json.dumps({"task": "lidc", "models": ["unet", "probunet"]}))
    (out / "results.md").unlink()
    proc = subprocess.run(cmd[:-3], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table_rows((out / "results.md").read_text().split("\n\n")[1])
    assert [r for r in rows if not r.startswith("reference")] == ["model", "unet", "probunet", "oracle"]
    assert rows["unet"][3] == test_table_unet_ged16
    for bad, said in ((["--tracking", "mlfow"], "argument --tracking: invalid choice: 'mlfow' (choose from 'mlflow')"),
                      (["--ensemble-members", "0"], "argument --ensemble-members: expected an integer >= 1, got '0'"),
                      (["--dataset-kwargs", "{bad"],  # was a traceback of the bundle run and one of compare.py
                       "--dataset-kwargs: expected a dict such as \"{'num_patients': 12}\", got '{bad'")):
        proc = subprocess.run([*cmd, *bad], capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 2 and proc.stderr.splitlines() == [f"compare.py: error: {said} (see --help)"]
    # Ctrl-C while --report loads MONAI (``-X importtime`` says when torch is being imported; its lines left out):
    # one line that says to run it again, not --resume's advice (--report trains nothing)
    import signal

    proc = terminal_job([sys.executable, "-X", "importtime", *cmd[1:]], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # type: ignore[union-attr]
        lines.append(line)
        if "torch" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    said = [x for x in "".join(lines).splitlines() + rest.splitlines() if not x.startswith("import time:")]
    assert proc.returncode == 130 and said == ["compare.py: interrupted by Ctrl-C; the same command continues."], said


def _table_rows(markdown: str) -> dict[str, list[str]]:
    cells = [line.split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {c[1].strip(): [v.strip() for v in c[2:-1]] for c in cells}


def _per_image(eval_dir: Path, name: str, s: int = 16) -> np.ndarray:
    with open(eval_dir / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == name and int(r["S"]) == s]
    return np.array([float(r["ged"]) for r in sorted(rows, key=lambda r: int(r["index"]))])


def test_reference_ged_handler_reports_the_best_vote_at_every_run():
    """ReferenceGED: graders A, B, B and nothing (A inside B, r = d(A, B)): the vote >= 2 of 4 is B and scores
    2 E[d(B, Y)] - E[d(Y, Y')] = (r + 1) / 2 - (4r + 6) / 16, below the vote >= 3 (A); written into the metrics of
    every run, computed once."""
    from ignite.engine import Engine
    from monai.data import DataLoader

    from monai_probunet.handlers import GeneralizedEnergyDistance, ReferenceGED

    r = 1 - A.sum() / B.sum()
    data = [{"label": torch.as_tensor(np.stack([A, B, B, EMPTY]))}]
    handler = ReferenceGED(GeneralizedEnergyDistance())
    engine = Engine(lambda e, batch: None)
    handler.attach(engine)
    engine.run(DataLoader(data, batch_size=1), max_epochs=1)
    assert engine.state.metrics["val_ged_vote"] == pytest.approx((r + 1) / 2 - (4 * r + 6) / 16, abs=1e-6)
    data[0]["label"] = torch.as_tensor(np.stack([B] * 4))  # not recomputed: the split does not change
    engine.state.metrics.clear()
    engine.run(DataLoader(data, batch_size=1), max_epochs=2)
    assert engine.state.metrics["val_ged_vote"] == pytest.approx((r + 1) / 2 - (4 * r + 6) / 16, abs=1e-6)


def test_compare_leaves_a_folder_of_someone_else_untouched(tmp_path):
    """benchmarks/compare.py --out: a folder holding files it did not write (a results.md of the user's own), a
    file, or a folder below a file, is refused in one line (exit 2) before anything is trained or written."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my own results\n")
    (tmp_path / "a_file").write_text("mine\n")
    expected = {mine: "is a folder holding files this program did not write; it is left untouched",
                tmp_path / "a_file": "is a file, not a folder",
                tmp_path / "a_file" / "out": f"cannot be created: {tmp_path / 'a_file'} is a file"}  # fmt: skip
    for out, said in expected.items():
        for extra in ([], ["--report"], ["--resume"]) if out == mine else ([],):
            proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), "--out", str(out),
                                   "--quick", *extra], capture_output=True, text=True, timeout=120, check=False)
            err = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(err) == 1 and f"--out {out} {said}" in err[0], proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["results.md"]
    assert (mine / "results.md").read_text() == "my own results\n" and (tmp_path / "a_file").read_text() == "mine\n"


@pytest.mark.slow
def test_compare_ctrl_c_stops_in_one_line_and_resume_completes(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: compare.py and its bundle runs) during a comparison: exit
    status 130 and one line saying how to continue, the interrupted training's checkpoint kept; the same command
    with --resume then completes the table."""
    import signal
    import time

    from tests.test_folder_dataset_checks import _folder

    datalist = _folder(tmp_path / "my_graders")
    out = tmp_path / "compare"
    cmd = [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--dataset-dir", str(datalist.parent), "--out",
           str(out), "--quick", "--max-epochs", "40", "--precision", "fp32", "--models", "probunet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = terminal_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not (out / "models" / "probunet" / "checkpoint_last.pt").is_file() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines() == ["compare.py: interrupted by Ctrl-C; the same command with --resume "
                                           "continues every training where it stopped."], stderr[-2000:]
    assert "interrupted by Ctrl-C" in (out / "train_probunet.log").read_text()
    assert not (out / "results.md").exists()
    state = torch.load(out / "models" / "probunet" / "checkpoint_last.pt", weights_only=True)["trainer"]
    saved_epoch = state["iteration"] // state["epoch_length"]  # where Ctrl-C stopped it (its epochs take a second)
    cmd[cmd.index("40")] = str(saved_epoch + 2)  # a shorter schedule from the saved epoch on: the test's time
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=900, check=False, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "probunet" in _table_rows((out / "results.md").read_text().split("\n\n")[1])


@pytest.mark.slow
def test_compare_trains_and_scores_on_your_own_data(tmp_path):
    """benchmarks/compare.py --dataset-dir DIR: every model trained and scored on the user's own folder dataset
    (read, never written), the table with its reference rows from that folder's test split; with --tracking each
    training, its evaluation (a child run) and the table in one MLflow experiment, two trainings at a time."""
    import mlflow

    from tests.test_folder_dataset_checks import _folder

    datalist = _folder(tmp_path / "my_graders")
    before = {p: p.read_bytes() for p in sorted(datalist.parent.rglob("*")) if p.is_file()}
    out = tmp_path / "compare"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--dataset-dir", str(datalist.parent), "--out",
           str(out), "--quick", "--max-epochs", "1", "--precision", "fp32", "--models", "probunet", "unet",
           "--jobs", "2", "--tracking", "--tracking-uri", uri]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("compare")  # --out's folder name
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"probunet", "unet", "eval_probunet", "eval_unet", "comparison"}
    for name in ("probunet", "unet"):
        training, evaluation = runs[name], runs[f"eval_{name}"]
        assert training.info.status == evaluation.info.status == "FINISHED"
        assert evaluation.data.tags["mlflow.parentRunId"] == training.info.run_id
        config = [a.path for a in client.list_artifacts(training.info.run_id) if a.path.startswith("config_")]
        downloaded = client.download_artifacts(training.info.run_id, config[0], str(tmp_path))
        executed = json.loads(Path(downloaded).read_text())
        assert executed["ckpt_dir"] == str(out / "models" / name)  # its own config, though both started together
        summary = json.loads((out / "eval" / name / "summary.json").read_text())
        ged16 = next(e["mean"] for e in summary["models"][name]["metrics"]["ged"] if e["S"] == 16)
        logged = client.get_metric_history(evaluation.info.run_id, "test_ged")
        assert next(m.value for m in logged if m.step == 16) == pytest.approx(ged16)
        logged = client.get_metric_history(runs["comparison"].info.run_id, f"test_ged_{name}")
        assert next(m.value for m in logged if m.step == 16) == pytest.approx(ged16)
    table = client.download_artifacts(runs["comparison"].info.run_id, "results.md", str(tmp_path / "artifacts"))
    assert Path(table).read_text() == (out / "results.md").read_text()
    rows = _table_rows((out / "results.md").read_text().split("\n\n")[1])
    assert {"probunet", "unet", "oracle", "reference: predicting nothing"} <= set(rows)
    assert {p: p.read_bytes() for p in sorted(datalist.parent.rglob("*")) if p.is_file()} == before
    assert not (out / "data").exists()  # nothing generated: the user's data was used
    models = {name: (out / "models" / name / "model.pt").read_bytes() for name in ("probunet", "unet")}
    # --resume after the comparison completed: nothing trains again, every model is scored as it was
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert {name: (out / "models" / name / "model.pt").read_bytes() for name in models} == models
    trainings = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name in models]
    assert sorted(r.info.run_id for r in trainings) == sorted(runs[n].info.run_id for n in models)  # the same runs
    assert "nothing trained" in (out / "train_probunet.log").read_text()
    assert _table_rows((out / "results.md").read_text().split("\n\n")[1]).keys() == rows.keys()
    # built-in generation options with your own data: one line, exit 2
    proc = subprocess.run([*cmd[:6], "--dataset", "shapes"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--dataset-dir is your own data" in proc.stderr, proc.stderr[-2000:]
    # a store MLflow cannot keep runs in, or a store without --tracking: one line, exit 2, nothing trained
    for extra, expected in ((["--tracking", "--tracking-uri", str(tmp_path / "runs")], "keeps no runs in a folder"),
                            (["--tracking-uri", uri], "only with --tracking")):  # fmt: skip
        proc = subprocess.run([*cmd[:6], "--out", str(tmp_path / "refused"), *extra], capture_output=True, text=True,
                              timeout=60, check=False, env=env)  # fmt: skip
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "refused").exists()
