"""ONNX export of the shipped model's sampler through MONAI's bundle ``onnx_export``, run by onnxruntime; also the
paper's network (``paper_model.yaml``: the prior's global pooling, the image in the posterior, a 6-D latent)."""

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
@pytest.mark.parametrize("variant", ["shipped", "paper_model"])
def test_onnx_export_of_the_sampler_matches_pytorch(tmp_path, variant):
    """`python -m monai.bundle onnx_export export_def` gives a graph whose 16 hypotheses equal PyTorch's to 1e-4: the
    shipped model (its prior also pools the crop's centre), and the paper's network at random weights (its prior
    head's weights set wider than at initialisation, so that the prior's mean reaches the output)."""
    from monai.bundle import ConfigParser, onnx_export

    configs, model = CONFIGS, MODEL
    if variant == "paper_model":
        configs = [CONFIGS[0], str(REPO / "bundle" / "configs" / "paper_model.yaml"), CONFIGS[1]]
        parser = ConfigParser()
        parser.read_config(configs)
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def")
        assert net.prior_net.pooling == "mean" and net.latent_dim == 6
        torch.nn.init.normal_(net.prior_net.head.weight, std=0.05)
        model = tmp_path / "paper_model.pt"
        torch.save(net.state_dict(), model)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export(
            net_id="export_def", filepath=str(path), ckpt_file=str(model), meta_file=str(METADATA),
            config_file=configs, input_shape=[1, 1, 64, 64],
            converter_kwargs={"input_names": ["image"], "output_names": ["logits"]},  # as docs/export.md
        )
    parser = ConfigParser()
    parser.read_config(configs)
    num_samples = parser.get_parsed_content("export_num_samples")
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, ProbUNet)
    network.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    sampler = ProbUNetSampler(network.eval(), num_samples=num_samples, seed=parser.get_parsed_content("export_seed"))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and [o.name for o in session.get_outputs()] == ["logits"]
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
    # a constant crop (all air: 0 in the window) leaves every feature map constant, which the instance norm maps to
    # rounding noise over sqrt(eps): the logits differ between the two runtimes (docs/export.md), the labels do not
    (onnx_out,) = session.run(None, {inp.name: np.zeros((1, 1, 64, 64), np.float32)})
    with torch.no_grad():
        ref = sampler(torch.zeros(1, 1, 64, 64)).numpy()
    labels = unstack_hypotheses(torch.from_numpy(onnx_out), 2).argmax(2)
    assert torch.equal(labels, unstack_hypotheses(torch.from_numpy(ref), 2).argmax(2))
