"""Pairwise 1 - IoU distances between sets of label maps, vectorised over sets and batch.

On the CPU the per-class pixel counts come from bit-packed masks: each map's class mask is packed to one bit per
pixel (``numpy.packbits``), and the intersection of two maps is ``popcount(a & b)`` summed over 64-bit words. The
input is read once; the pair work runs on data 8x smaller than the bytes and 32x smaller than float32 one-hots,
in chunks of images sized to the core's L2 cache, one chunk per thread (``torch.get_num_threads()``). Counts are
exact integers, so the distances equal the float32 one-hot Gram matrix path (used on GPUs) bit for bit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["pairwise_iou_distance", "joint_iou_distance", "class_counts", "iou_distance_from_counts"]

# Elements per chunk of the batch on the one-hot GEMM path (GPU tensors): keeps the float32 chunk bounded.
_CHUNK_ELEMENTS = 1 << 21
# Without numpy >= 2's bitwise_count: popcount of 16-bit halves of words by table.
_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


@functools.lru_cache(maxsize=1)
def _cache_budget() -> int:
    """Bytes of working set per thread: the per-core L2 cache size (Linux sysfs), else 1 MiB."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            with open(os.path.join(path, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            if level == "2" and kind in ("Unified", "Data"):
                with open(os.path.join(path, "size")) as f:
                    size = f.read().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
                return max(64 << 10, int(size.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return 1 << 20


# Images per chunk when set (tests pin it to exercise chunk edges); None: from the cache budget.
_FIXED_CHUNK: int | None = None


def _images_per_chunk(mask_bytes: int, packed_maps: int, and_maps: int) -> int:
    """Images per chunk so that one chunk's packed maps and AND temporaries fit the per-thread cache budget."""
    if _FIXED_CHUNK:
        return _FIXED_CHUNK
    per_image = mask_bytes * (packed_maps + and_maps * 9 // 8)
    return max(1, _cache_budget() // max(1, per_image))


def _popcount_sum(words: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = sum over the last axis of popcount(words)``; ``words`` is ``... x W`` uint64, C-contiguous."""
    if _HAS_BITWISE_COUNT:
        counts = np.bitwise_count(words, out=scratch[: words.size].reshape(words.shape))
    else:
        counts = _POPCOUNT16[words.view(np.uint16)]
    np.add.reduce(counts, axis=-1, dtype=out.dtype, out=out)


def _pack(maps: np.ndarray, classes: Sequence[int], out: np.ndarray) -> None:
    """Bit-pack the class masks of ``maps`` (``m x n x P``) into ``out`` (``K x n x m x Wbytes`` uint8, zero-padded)."""
    nbytes = (maps.shape[-1] + 7) // 8
    for k, c in enumerate(classes):
        if maps.dtype == np.bool_ and c == 1:
            mask = maps
        elif maps.dtype == np.bool_ and c == 0:
            mask = ~maps
        else:
            mask = maps == c
        out[k, :, :, :nbytes] = np.packbits(mask, axis=-1).transpose(1, 0, 2)


def _chunk_counts(
    sets: Sequence[np.ndarray], other: np.ndarray | None, classes: Sequence[int], lo: int, hi: int, words: int,
    inter_out: np.ndarray, x_count_out: np.ndarray | None, y_count_out: np.ndarray | None,
) -> None:
    """Intersection counts for images ``lo:hi`` into ``inter_out[lo:hi]`` (``m x K x n x a``).

    The joint set ``sets`` (concatenated along dim 1) is paired with itself (only ``j >= i`` is written, the
    diagonal holds the per-map counts) or with ``other`` (then the per-map counts go to ``x_count_out`` and
    ``y_count_out``, ``m x K x n`` and ``m x K x a``). Packed data are set-major (``K x n x m x W``) so that
    every AND broadcasts one map over a contiguous block of the others.
    """
    m, k = hi - lo, len(classes)
    n = sum(s.shape[1] for s in sets)
    packed = np.zeros((k, n, m, words * 8), dtype=np.uint8)
    start = 0
    for s in sets:
        _pack(np.ascontiguousarray(s[lo:hi]), classes, packed[:, start : start + s.shape[1]])
        start += s.shape[1]
    x = packed.view(np.uint64)  # K x n x m x W
    if other is None:
        a, y = n, x
    else:
        a = other.shape[1]
        packed_y = np.zeros((k, a, m, words * 8), dtype=np.uint8)
        _pack(np.ascontiguousarray(other[lo:hi]), classes, packed_y)
        y = packed_y.view(np.uint64)
    acc = np.uint16 if words * 64 < (1 << 16) else np.int64  # holds any count
    width = max(n, a)
    tmp = np.empty((k, width, m, words), dtype=np.uint64)
    scratch = np.empty(tmp.size if _HAS_BITWISE_COUNT else 0, dtype=np.uint8)
    result = np.zeros((k, n, a, m), dtype=acc)
    if other is None:  # Gram: the upper triangle, row by row
        for i in range(n):
            t = np.bitwise_and(x[:, i : i + 1], x[:, i:], out=tmp[:, : n - i])
            _popcount_sum(t, scratch, result[:, i, i:])
        inter_out[lo:hi] = result.transpose(3, 0, 1, 2)
        return
    counts = np.empty((k, width, m), dtype=acc)
    _popcount_sum(x, scratch, counts[:, :n])
    x_count_out[lo:hi] = counts[:, :n].transpose(2, 0, 1)  # type: ignore[index]
    _popcount_sum(y, scratch, counts[:, :a])
    y_count_out[lo:hi] = counts[:, :a].transpose(2, 0, 1)  # type: ignore[index]
    if a <= n:  # one AND per map of the smaller set
        for j in range(a):
            t = np.bitwise_and(x, y[:, j : j + 1], out=tmp[:, :n])
            _popcount_sum(t, scratch, result[:, :, j])
    else:
        for i in range(n):
            t = np.bitwise_and(x[:, i : i + 1], y, out=tmp[:, :a])
            _popcount_sum(t, scratch, result[:, i])
    inter_out[lo:hi] = result.transpose(3, 0, 1, 2)


def _as_numpy_maps(x: torch.Tensor) -> np.ndarray:
    """``B x N x *spatial`` CPU tensor as a ``B x N x P`` numpy array (no copy when already contiguous)."""
    x = x.detach()
    if x.dtype in (torch.bfloat16, torch.float16) or x.is_complex():
        x = x.float()
    return x.reshape(x.shape[0], x.shape[1], -1).numpy()


def _bit_counts(
    sets: Sequence[torch.Tensor], other: torch.Tensor | None, classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact per-class counts from bit-packed masks (CPU) as float32 arrays; see :func:`class_counts`."""
    xs = [_as_numpy_maps(s) for s in sets]
    yn = None if other is None else _as_numpy_maps(other)
    b, p, k = xs[0].shape[0], xs[0].shape[2], len(classes)
    n = sum(s.shape[1] for s in xs)
    words = (p + 63) // 64
    chunk = _images_per_chunk(k * words * 8, n + (0 if yn is None else yn.shape[1]), n if yn is None else max(n, yn.shape[1]))
    workers = max(1, min(torch.get_num_threads(), -(-b // chunk)))
    chunk = min(chunk, -(-b // workers))  # at least one chunk per worker
    bounds = [(lo, min(b, lo + chunk)) for lo in range(0, b, chunk)]
    inter = np.empty((b, k, n, n if yn is None else yn.shape[1]), dtype=np.int64)
    x_count = None if yn is None else np.empty((b, k, n), dtype=np.int64)
    y_count = None if yn is None else np.empty((b, k, yn.shape[1]), dtype=np.int64)

    def run(bound: tuple[int, int]) -> None:
        _chunk_counts(xs, yn, classes, bound[0], bound[1], words, inter, x_count, y_count)

    if workers == 1:
        for bound in bounds:
            run(bound)
    else:  # numpy releases the GIL inside packbits and the ufuncs
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, bounds))
    if yn is None:
        full = np.triu(inter) + np.swapaxes(np.triu(inter, 1), -1, -2)  # mirror the upper triangle
        count = np.ascontiguousarray(np.diagonal(full, axis1=-2, axis2=-1)).astype(np.float32)
        return count, count, full.astype(np.float32)
    return x_count.astype(np.float32), y_count.astype(np.float32), inter.astype(np.float32)


def _np_distance_from_counts(x_count: np.ndarray, y_count: np.ndarray, inter: np.ndarray) -> torch.Tensor:
    """:func:`iou_distance_from_counts` in numpy (float32, the same operations): no thread wake-ups for small arrays."""
    union = x_count[..., :, None] + y_count[..., None, :] - inter
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, np.float32(1)), np.float32(0))
    n_present = present.sum(axis=1)
    mean_iou = iou.sum(axis=1) / np.maximum(n_present, 1).astype(np.float32)
    return torch.from_numpy(np.where(n_present > 0, np.float32(1) - mean_iou, np.float32(0)).astype(np.float32))


def _onehot_counts(
    x: torch.Tensor, y: torch.Tensor | None, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts from a batched matrix product of float32 one-hot maps (for GPU tensors)."""
    b, s = x.shape[:2]
    cls = torch.as_tensor(list(classes), device=x.device).view(1, -1, 1, 1)
    x_oh = (x.reshape(b, s, -1).unsqueeze(1) == cls).float()  # B x K x S x P
    if y is None:
        gram = torch.matmul(x_oh, x_oh.transpose(-1, -2))
        x_count = gram.diagonal(dim1=-2, dim2=-1)  # |x_i| = <x_i, x_i>: no extra pass over the pixels
        return x_count, x_count, gram
    y_oh = (y.reshape(b, y.shape[1], -1).unsqueeze(1) == cls).float()  # B x K x A x P
    return x_oh.sum(-1), y_oh.sum(-1), torch.matmul(x_oh, y_oh.transpose(-1, -2))


def class_counts(
    x: torch.Tensor, y: torch.Tensor | None, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pixel counts of two sets of label maps and of their pairwise intersections.

    Args:
        x: ``B x S x *spatial`` integer (or bool) label maps.
        y: ``B x A x *spatial`` integer (or bool) label maps, or ``None`` for ``y = x`` (one pass, a Gram matrix).
        classes: class values to count; other values (e.g. an ignore label) count for no class.

    Returns:
        ``(x_count B x K x S, y_count B x K x A, intersection B x K x S x A)`` as float32, K = len(classes),
        on ``x.device``. Counts are exact integers (float32 holds them exactly up to 2**24 pixels).
    """
    if x.device.type != "cpu":
        return _onehot_counts(x, y, classes)
    x_count, y_count, inter = _bit_counts([x], y, classes)
    return torch.from_numpy(x_count), torch.from_numpy(y_count), torch.from_numpy(inter)


def iou_distance_from_counts(x_count: torch.Tensor, y_count: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c IoU_c`` from :func:`class_counts`' output; classes absent from both maps are left out.

    Args:
        x_count: ``B x K x S``; y_count: ``B x K x A``; inter: ``B x K x S x A`` (float32 counts).

    Returns:
        ``B x S x A`` float32 distances in [0, 1]; 0 for a pair where every class is absent from both maps.
    """
    union = x_count.unsqueeze(-1) + y_count.unsqueeze(-2) - inter  # B x K x S x A
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    n_present = present.sum(dim=1)
    mean_iou = iou.sum(dim=1) / n_present.clamp_min(1)
    return torch.where(n_present > 0, 1.0 - mean_iou, torch.zeros_like(mean_iou))


def _check(x: torch.Tensor, y: torch.Tensor | None, classes: Sequence[int]) -> None:
    if y is not None and (
        x.ndim < 3 or y.ndim != x.ndim or x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]
    ):
        raise ValueError(
            f"expected x: B x S x *spatial and y: B x A x *spatial with equal B and spatial shape, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.ndim < 3:
        raise ValueError(f"expected x: B x S x *spatial, got {tuple(x.shape)}.")
    if len(classes) == 0:
        raise ValueError("classes must name at least one class.")


def pairwise_iou_distance(
    x: torch.Tensor, y: torch.Tensor | None = None, classes: Sequence[int] = (1,)
) -> torch.Tensor:
    """``d(x_i, y_j) = 1 - mean_c IoU_c(x_i, y_j)`` for every pair, every image.

    A class absent from both maps of a pair is left out of the mean; a pair where every class is absent from both
    maps has distance 0 (for binary lesion masks with ``classes=(1,)``: empty vs empty -> 0, the paper's rule).
    Pixels of a value outside ``classes`` (e.g. an ignore label) count for no class. No loop over pairs: bit-packed
    popcounts on the CPU, one batched matrix product of one-hot maps on other devices.

    Args:
        x: ``B x S x *spatial`` label maps (e.g. S samples).
        y: ``B x A x *spatial`` label maps (e.g. A graders), same spatial shape; ``None`` means ``x`` itself.
        classes: the classes whose IoU is averaged (binary lesions: ``(1,)``).

    Returns:
        ``B x S x A`` float32 distances in [0, 1], on ``x.device``.
    """
    _check(x, y, classes)
    if x.device.type == "cpu":
        return _np_distance_from_counts(*_bit_counts([x], y, classes))
    b = x.shape[0]
    per_item = max(1, (x[0].numel() + (0 if y is None else y[0].numel())) * len(classes))
    chunk = max(1, _CHUNK_ELEMENTS // per_item)
    out = []
    for start in range(0, b, chunk):
        yc = None if y is None else y[start : start + chunk]
        out.append(iou_distance_from_counts(*_onehot_counts(x[start : start + chunk], yc, classes)))
    return torch.cat(out, dim=0)


def joint_iou_distance(sets: Sequence[torch.Tensor], classes: Sequence[int] = (1,)) -> torch.Tensor:
    """:func:`pairwise_iou_distance` of the concatenation of ``sets`` along dim 1 with itself, without building it.

    Args:
        sets: tensors ``B x N_i x *spatial`` with equal ``B`` and spatial shape (any label dtypes).
        classes: the classes whose IoU is averaged.

    Returns:
        ``B x T x T`` float32 distances, ``T = sum_i N_i``, rows and columns in the order of ``sets``.
    """
    if len(sets) == 0:
        raise ValueError("sets must hold at least one tensor.")
    for s in sets[1:]:
        _check(sets[0], s, classes)
    _check(sets[0], None, classes)
    if all(s.device.type == "cpu" for s in sets):
        return _np_distance_from_counts(*_bit_counts(list(sets), None, classes))
    dtype = sets[0].dtype
    return pairwise_iou_distance(torch.cat([s.to(dtype) for s in sets], dim=1), None, classes)
