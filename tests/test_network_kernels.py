"""The faster kernels of the U-Net core compute the same function as the plain ones, with the same state dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from monai_probunet.networks import ProbUNet
from monai_probunet.networks.unet_core import ConvBlock, resample_by_interpolation

from .conftest import REPO, TRAIN_YAML


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 9, 7), (1, 2, 6, 5, 7), (2, 3, 11)])
def test_down_sampling_is_linear_interpolation_at_half_scale(shape):
    x = torch.randn(*shape)
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.ndim]
    expected = F.interpolate(x, scale_factor=0.5, mode=mode, align_corners=False)
    torch.testing.assert_close(resample_by_interpolation(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_default_norm_is_instance_norm_without_parameters(spatial_dims):
    torch.manual_seed(0)
    block = ConvBlock(spatial_dims, 2, 4, num_convs=2)
    plain = ConvBlock(spatial_dims, 2, 4, num_convs=2, norm=None)
    assert block.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 2, *([6] * spatial_dims), requires_grad=True)
    expected = x
    for conv in (m.conv for m in block):
        expected = torch.relu(F.instance_norm(conv(expected), eps=1e-5))
    out = block(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, g)
    (want,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_other_norms_are_left_to_monai():
    affine = ConvBlock(2, 2, 4, num_convs=1, norm=("instance", {"affine": True}))
    assert isinstance(affine[0].adn.N, torch.nn.InstanceNorm2d) and affine[0].adn.N.affine
    batch = ConvBlock(2, 2, 4, num_convs=1, norm="batch")
    assert isinstance(batch[0].adn.N, torch.nn.BatchNorm2d)


def test_shipped_model_loads_strictly():
    parser = ConfigParser()
    parser.read_config(str(TRAIN_YAML))
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, ProbUNet)
    net.load_state_dict(torch.load(REPO / "bundle" / "models" / "model.pt", weights_only=True), strict=True)


def test_plain_instance_norm_is_instance_norm_in_fp32_and_under_autocast():
    """The parameter-free norm equals MONAI's instance norm in fp32, in both memory formats (group-norm kernels
    channels-first, batch-norm kernels per sample channels-last); under bf16 autocast it keeps bf16 and the memory
    format, and is the exact normalisation of the bf16 input rounded once to bf16, at least as close to it as the
    instance norm's own bf16 result."""
    from monai_probunet.networks.unet_core import PlainInstanceNorm

    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16) * 3 + 1
    norm, ref = PlainInstanceNorm(8), torch.nn.InstanceNorm2d(8)
    torch.testing.assert_close(norm(x), ref(x), rtol=1e-5, atol=1e-5)
    last = norm(x.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(last, ref(x), rtol=1e-5, atol=1e-5)
    xb = x.bfloat16()
    exact = torch.nn.functional.instance_norm(xb.float(), eps=1e-5)
    for fmt in (torch.contiguous_format, torch.channels_last):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, r = norm(xb.contiguous(memory_format=fmt)), ref(xb.contiguous(memory_format=fmt))
        assert y.dtype == r.dtype == torch.bfloat16 and y.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(y.float(), exact, rtol=2**-8, atol=1e-5)  # rounded once: within half a bf16 step
        assert (y.float() - exact).abs().max() <= (r.float() - exact).abs().max()
    assert not list(norm.parameters()) and not list(norm.buffers())


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.channels_last_3d, torch.contiguous_format])
def test_per_sample_instance_norm_gradients(memory_format):
    """The channels-last kernel (one batch-norm call per sample, written into one output) has the instance norm's
    exact gradients (double precision, finite differences) and keeps the memory format; a gradient arriving in
    another format than the input is taken as well."""
    from monai_probunet.networks.instance_norm import instance_norm_per_sample

    torch.manual_seed(0)
    shape = (2, 3, 5, 6, 4) if memory_format == torch.channels_last_3d else (3, 4, 7, 5)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).contiguous(memory_format=memory_format).requires_grad_()
    assert torch.autograd.gradcheck(instance_norm_per_sample, (x,))
    y = instance_norm_per_sample(x)
    assert y.is_contiguous(memory_format=memory_format)
    g = torch.randn(shape, dtype=torch.float64)  # channels-first
    (got,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().contiguous().requires_grad_()
    (want,) = torch.autograd.grad(F.instance_norm(x2), x2, g)
    torch.testing.assert_close(got, want)


def test_network_trains_alike_in_both_memory_formats():
    """A U-Net core of the default blocks gives the same output and weight gradients channels-last as channels-first
    (fp32), so a run's memory format changes its speed, not what it learns."""
    from monai_probunet.networks.unet_core import UNetCore

    torch.manual_seed(0)
    first = UNetCore(2, 1, (4, 8), 2)
    last = copy.deepcopy(first).to(memory_format=torch.channels_last)
    x = torch.rand(3, 1, 16, 16)
    out_first, out_last = first(x), last(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_last, out_first, rtol=1e-5, atol=1e-5)
    out_first.square().mean().backward()
    out_last.square().mean().backward()
    for (name, a), b in zip(first.named_parameters(), last.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("bf16", [False, True])
def test_channels_last_norm_takes_meta_tensors(bf16):
    """MONAI's loaders give MetaTensors, and a MetaTensor makes every tensor created from it a view: the channels-last
    kernel runs on the plain data, so the block's in-place ReLU after it trains (forward and backward) and gives the
    channels-first result."""
    from monai.data import MetaTensor

    torch.manual_seed(0)
    block = ConvBlock(2, 1, 4, num_convs=2)
    last = copy.deepcopy(block).to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 12, 12)
    meta = MetaTensor(x.clone()).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out, want = last(meta), block(x)
    out.float().square().mean().backward()
    assert meta.grad is not None and meta.grad.abs().sum() > 0
    torch.testing.assert_close(out.float(), want.float(), **({"rtol": 0.02, "atol": 0.02} if bf16 else {}))
