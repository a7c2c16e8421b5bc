"""Instance normalisation without parameters, by the fastest kernel PyTorch has per device, format and dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PlainInstanceNorm", "instance_norm_per_sample", "plain_instance_norm_eps"]


class PlainInstanceNorm(nn.GroupNorm):
    """Instance normalisation without affine parameters or running statistics, by the faster kernel per precision.

    It equals ``GroupNorm`` with one group per channel (both normalise each channel of each sample over its spatial
    positions with the biased variance). Channels-first on the CPU PyTorch's fused ``group_norm`` kernels are the
    fastest; autocast would run ``group_norm`` in fp32 (a cast of every activation there and back), so under autocast
    it runs outside autocast on the activations' own dtype (statistics in fp32, one rounding at the end). In the
    channels-last memory format on the CPU, where ``group_norm`` and ``instance_norm`` are several times slower, each
    sample goes through the channels-last batch-norm kernels (:func:`instance_norm_per_sample`). On a GPU it is
    ``instance_norm``, which keeps the autocast dtype. No parameters or buffers: state dicts are unchanged.

    Shapes: ``B x C x *spatial`` -> the same, in the input's memory format.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, num_channels, eps=eps, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not x.is_contiguous():
            return instance_norm_per_sample(x, self.eps)
        if torch.is_autocast_enabled(x.device.type):
            if x.device.type != "cpu":
                return F.instance_norm(x, eps=self.eps)
            with torch.autocast("cpu", enabled=False):
                return F.group_norm(x, self.num_groups, eps=self.eps)
        return F.group_norm(x, self.num_groups, eps=self.eps)


def instance_norm_per_sample(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Instance normalisation (no parameters) of ``x`` by one batch-norm call per sample, in ``x``'s own dtype.

    A sample of a channels-last batch is one contiguous block in which batch norm's statistics (per channel, over
    the spatial positions) are instance norm's; PyTorch's CPU batch-norm kernels read that layout directly. Each
    call writes into its slice of one output (and, backwards, of one input gradient), so nothing is concatenated.
    Statistics are kept in fp32 for a bf16 input (batch norm's mixed-precision kernels): the result is the exact
    normalisation rounded once. Runs outside autocast, which would cast the activations to fp32 and back.

    Args:
        x: ``B x C x *spatial`` tensor, any memory format (fastest channels-last).
        eps: added to the variance.

    Returns:
        ``B x C x *spatial``, the same dtype and memory format as ``x``; a plain tensor also for a subclass of one
        (the data only).
    """
    if type(x) is not torch.Tensor:
        # a subclass such as MONAI's MetaTensor makes every tensor created from it a view, which autograd forbids
        # as a custom function's output modified in place (the ReLU after the norm)
        x = x.as_subclass(torch.Tensor)
    with torch.autocast(x.device.type, enabled=False):
        return _PerSampleBatchNorm.apply(x, eps)


class _PerSampleBatchNorm(torch.autograd.Function):
    """:func:`instance_norm_per_sample`'s forward and backward: ``B x C x *spatial`` -> the same."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        # for a bf16 input, a weight of ones and a bias of zeros in fp32 select the kernels with fp32 statistics
        stats = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        ones, zeros = x.new_ones(c, dtype=stats), x.new_zeros(c, dtype=stats)
        out = torch.empty_like(x)
        mean, invstd = x.new_empty((n, c), dtype=stats), x.new_empty((n, c), dtype=stats)
        for i in range(n):
            torch.ops.aten.native_batch_norm.out(
                x[i : i + 1], ones, zeros, None, None, True, 0.0, eps,
                out=out[i : i + 1], save_mean=mean[i], save_invstd=invstd[i],
            )  # fmt: skip
        ctx.save_for_backward(x, mean, invstd, ones)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, mean, invstd, ones = ctx.saved_tensors
        if grad.stride() != x.stride():
            grad = torch.empty_like(x).copy_(grad)
        grad_in = torch.empty_like(x)
        unused = (torch.empty_like(ones), torch.empty_like(ones))  # the weight's and bias' gradients, not needed
        for i in range(x.shape[0]):
            torch.ops.aten.native_batch_norm_backward.out(
                grad[i : i + 1], x[i : i + 1], ones, None, None, mean[i], invstd[i], True, ctx.eps,
                [True, True, True], out0=grad_in[i : i + 1], out1=unused[0], out2=unused[1],
            )  # fmt: skip
        return grad_in, None


def plain_instance_norm_eps(norm: str | tuple | None) -> float | None:
    """``eps`` of an instance normalisation without affine parameters or running statistics, else ``None``.

    Such a normalisation equals ``GroupNorm`` with one group per channel and no affine parameters (both normalise
    each channel of each sample over its spatial positions with the biased variance), which PyTorch computes
    with fused kernels on CPU (measured faster than ``InstanceNorm``'s in ``benchmarks/train_speed.py``); neither
    has parameters or buffers, so state dicts are unchanged.
    """
    if norm is None:
        return None
    name, args = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]) if len(norm) > 1 else {})
    if not isinstance(name, str) or name.lower() != "instance":
        return None
    if args.pop("affine", False) or args.pop("track_running_stats", False):
        return None
    eps = float(args.pop("eps", 1e-5))
    args.pop("momentum", None)  # unused without running statistics
    return None if args else eps
