"""ONNX export of the shipped model's sampler through MONAI's bundle ``onnx_export``, run by onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_probunet.networks import ProbUNet, ProbUNetSampler, unstack_hypotheses

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "bundle" / "configs" / "train.yaml"), str(REPO / "bundle" / "configs" / "inference.yaml")]
METADATA = REPO / "bundle" / "configs" / "metadata.json"
MODEL = REPO / "bundle" / "models" / "model.pt"


@pytest.mark.slow
def test_onnx_export_of_the_shipped_sampler_matches_pytorch(tmp_path):
    """`python -m monai.bundle onnx_export export_def` gives a graph whose 16 hypotheses equal PyTorch's to 1e-4."""
    from monai.bundle import ConfigParser, onnx_export

    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export(
            net_id="export_def", filepath=str(path), ckpt_file=str(MODEL), meta_file=str(METADATA),
            config_file=CONFIGS, input_shape=[1, 1, 64, 64],
        )
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    num_samples = parser.get_parsed_content("export_num_samples")
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, ProbUNet)
    network.load_state_dict(torch.load(MODEL, map_location="cpu", weights_only=True))
    sampler = ProbUNetSampler(network.eval(), num_samples=num_samples, seed=parser.get_parsed_content("export_seed"))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    rng = np.random.default_rng(0)
    # a dark field with a bright blob (a lesion-like input in the window's [0, 1] range) and plain noise
    yy, xx = np.mgrid[:64, :64]
    blob = (0.1 + 0.6 * (((yy - 32) ** 2 + (xx - 30) ** 2) < 60)).astype(np.float32)
    for image in (blob[None, None], rng.random((1, 1, 64, 64), dtype=np.float32)):
        (onnx_out,) = session.run(None, {inp.name: image})
        with torch.no_grad():
            ref = sampler(torch.from_numpy(image)).numpy()
        assert onnx_out.shape == (1, num_samples * 2, 64, 64)
        np.testing.assert_allclose(onnx_out, ref, rtol=1e-4, atol=1e-4)
        # the latent noise is in the graph: the hypotheses' logits differ from each other
        assert not np.allclose(onnx_out[:, :2], onnx_out[:, 2:4], atol=1e-3)
        labels = unstack_hypotheses(torch.from_numpy(onnx_out), 2).argmax(2)
        ref_labels = unstack_hypotheses(torch.from_numpy(ref), 2).argmax(2)
        assert torch.equal(labels, ref_labels)
