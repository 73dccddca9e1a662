"""RoIAlign and RoIPool: fixed-size features for boxes on a feature map, as torchvision defines them.

RoIAlign is Mask R-CNN's (He et al. 2017, https://arxiv.org/abs/1703.06870): each output bin averages
``sampling_ratio x sampling_ratio`` bilinear samples at exact (unrounded) positions. RoIPool is Fast
R-CNN's (Girshick 2015, https://arxiv.org/abs/1504.08083): the box is rounded to the feature grid
and each bin takes the max of the cells it covers. Both follow torchvision.ops' conventions
(https://pytorch.org/vision/main/generated/torchvision.ops.roi_align.html) so results agree:

- ``boxes``: a (K, 5) tensor ``(batch_index, x1, y1, x2, y2)`` or a list of (L_i, 4) tensors, one
  per image, in input-image pixels; ``spatial_scale`` maps them onto the feature map (1 / stride).
- ``aligned=False`` (the original Mask R-CNN code): a box is scaled as it is and is at least 1 x 1
  feature cell. ``aligned=True``: the box is shifted by -0.5 cell after scaling, so that a sample
  at continuous coordinate c reads pixel centre c - 0.5 (pixel i covers [i, i + 1) and its value
  sits at i + 0.5); no minimum size.
- ``sampling_ratio > 0``: that many samples per bin along each axis; ``<= 0`` (torchvision's -1 / 0):
  adaptive, ``ceil(box height / output height)`` (and width) per box.
- A sample further than one cell outside the map reads 0; one within a cell of it reads the border.

How it is fast: bilinear sampling and the bin average are both linear, so each output bin is a
weighted sum of at most ``4 * samples`` feature-map cells. All bins of all boxes become one
``embedding_bag(cell index, per-sample weight)`` over the channels-last map (no Python per box,
nothing (K, C, bins, samples, 4)-sized materialised); the input gradient is the same sums taken per
map cell. The boxes take no gradient (as in torchvision) unless their weights require one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnkit.errors import CnnkitError


def _rois(boxes, dtype, device) -> torch.Tensor:
    """(K, 5) rois from a (K, 5) tensor or a list of per-image (L_i, 4) tensors."""
    if isinstance(boxes, (list, tuple)):
        parts = [
            torch.cat(
                [
                    torch.full((len(b), 1), float(i), dtype=dtype, device=device),
                    b.detach().to(dtype=dtype, device=device),
                ],
                1,
            )
            for i, b in enumerate(boxes)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, 5, dtype=dtype, device=device)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise CnnkitError(
            f"boxes must be (K, 5) (batch index, x1, y1, x2, y2) or a list of (L, 4) "
            f"tensors; received shape {tuple(boxes.shape)}"
        )
    return boxes.detach().to(dtype=dtype, device=device)  # no gradient to the boxes (as torchvision)


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    return int(output_size[0]), int(output_size[1])


def _axis_samples(start, length, bins: int, grid, gmax: int, size: int):
    """Bilinear taps along one axis, torchvision's bilinear_interpolate made batched.

    start, length, grid: (K,). Returns low/high cell index (K, bins, gmax) and their weights, each
    (K, bins, gmax), with weight 0 for samples past this box's grid or beyond the map's border.
    """
    dev, dt = start.device, start.dtype
    pos = torch.arange(bins, device=dev, dtype=dt)[None, :, None]  # (1, bins, 1)
    it = torch.arange(gmax, device=dev, dtype=dt)[None, None, :]  # (1, 1, gmax)
    bin_size = (length / bins)[:, None, None]
    g = grid.to(dt).clamp(min=1)[:, None, None]
    c = start[:, None, None] + pos * bin_size + (it + 0.5) * bin_size / g  # (K, bins, gmax)
    valid = (c >= -1.0) & (c <= size) & (it < grid[:, None, None])
    c = c.clamp(min=0)
    low = c.floor().to(torch.int64)
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(c), c - low.to(dt))
    w_high = frac * valid
    w_low = (1 - frac) * valid
    return low, high, w_low, w_high


def _prepare(input: torch.Tensor, boxes, output_size) -> tuple[torch.Tensor, int, int]:
    """What RoIAlign and RoIPool both start from: (K, 5) rois, out_h, out_w. The rois keep at least
    fp32 for a bf16 or fp16 map: box corners and sample positions in 8 bits of mantissa would be off by
    a pixel or more at a few hundred pixels."""
    ph, pw = _pair(output_size)
    return _rois(boxes, torch.promote_types(input.dtype, torch.float32), input.device), ph, pw


def roi_align(
    input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False
) -> torch.Tensor:
    """RoIAlign: input (N, C, H, W), boxes (K, 5) or list -> (K, C, out_h, out_w)."""
    n, ch, h, w = input.shape
    rois, ph, pw = _prepare(input, boxes, output_size)
    k = len(rois)
    if k == 0:
        return input.new_zeros(0, ch, ph, pw)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(1)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gy = torch.full((k,), sampling_ratio, dtype=torch.int64, device=input.device)
        gx = gy
    else:
        gy = torch.ceil(rh / ph).clamp(min=0).to(torch.int64)
        gx = torch.ceil(rw / pw).clamp(min=0).to(torch.int64)
    gymax, gxmax = max(int(gy.max()), 1), max(int(gx.max()), 1)
    yl, yh, wyl, wyh = _axis_samples(y1, rh, ph, gy, gymax, h)  # (K, ph, gy)
    xl, xh, wxl, wxh = _axis_samples(x1, rw, pw, gx, gxmax, w)  # (K, pw, gx)
    count = (gy * gx).clamp(min=1).to(rois.dtype)
    ys = torch.stack([yl, yh], -1)  # (K, ph, gy, 2)
    wy = torch.stack([wyl, wyh], -1) / count[:, None, None, None]
    xs = torch.stack([xl, xh], -1)  # (K, pw, gx, 2)
    wx = torch.stack([wxl, wxh], -1)
    rows = rois[:, 0].to(torch.int64)[:, None, None, None] * (h * w) + ys * w  # flat index of each row
    # cell index and weight of every tap, (K, ph, pw, gy, gx, 2, 2) -> (K * ph * pw, taps): each an outer
    # sum or product over (K, ph * gy * 2, pw * gx * 2), then one copy into that order (broadcasting
    # straight into it runs its inner loops over the size-2 axes, 2.7 times slower)
    idx = _tap_order(rows.to(torch.int32).reshape(k, -1, 1) + xs.to(torch.int32).reshape(k, 1, -1), ph, pw)
    wt = _tap_order(wy.reshape(k, -1, 1) * wx.reshape(k, 1, -1), ph, pw).to(input.dtype)
    if bool((gy < gymax).any() or (gx < gxmax).any()):
        # adaptive grids of different sizes: drop the zero-weight padding taps (exact: they add 0)
        mask = wt != 0
        offsets = torch.cat([idx.new_zeros(1), mask.sum(1).cumsum(0)[:-1]])
        out = _tap_sum(idx[mask], _channels_last(input), offsets, wt[mask])
    else:
        out = _tap_sum(idx, _channels_last(input), None, wt)
    # (K, C, ph, pw) in channels_last memory format, as conv2d takes it (no 4-byte-per-output copy)
    return out.view(k, ph, pw, ch).permute(0, 3, 1, 2)


def _tap_sum(idx: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor | None, wt: torch.Tensor) -> torch.Tensor:
    """``embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=wt)``, with a faster input
    gradient where the weights take none (:class:`_TapSum`)."""
    if wt.requires_grad or not (table.requires_grad and torch.is_grad_enabled()):
        return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=wt)
    return _TapSum.apply(idx, table, offsets, wt)


class _TapSum(torch.autograd.Function):
    """Each bag's weighted sum of table rows (``embedding_bag``'s forward). The backward takes the same
    sums the other way round: each table row gathers the output rows of the taps that read it, sorted
    by row once, in one ``embedding_bag``. In fp32 that is ``embedding_bag``'s own backward to the bit,
    in half the time on a CPU. For a bf16 map it sums in fp32 and rounds once, where ``embedding_bag``'s
    own backward sums in bf16 (about 15 times the error against fp64 for a Penn-Fudan batch's RoIs)."""

    @staticmethod
    def forward(ctx, idx, table, offsets, wt):  # type: ignore[override]
        ctx.save_for_backward(idx, offsets, wt)
        ctx.rows = table.shape[0]
        return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=wt)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        idx, offsets, wt = ctx.saved_tensors
        flat = idx.flatten()
        if flat.numel() == 0:  # every sample off the map: no tap reads the table
            return None, grad.new_zeros(ctx.rows, grad.shape[1]), None, None
        taps = torch.arange(len(flat), device=flat.device)
        if offsets is None:  # (bags, taps) indices
            bag = taps // idx.shape[1]
        else:  # 1-D indices, bag b from offsets[b]
            bag = torch.searchsorted(offsets, taps, right=True) - 1
        order = torch.argsort(flat, stable=True)
        rows, counts = torch.unique_consecutive(flat[order], return_counts=True)
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        # in fp32 for a bf16 or fp16 map, each sum rounded once at the end
        acc = torch.promote_types(grad.dtype, torch.float32)
        w = wt.flatten()[order].to(acc)
        sums = F.embedding_bag(bag[order], grad.to(acc).contiguous(), starts, mode="sum", per_sample_weights=w)
        out = sums.new_zeros(ctx.rows, grad.shape[1])
        return None, out.index_copy_(0, rows.long(), sums).to(grad.dtype), None, None


def _tap_order(outer: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(K, ph * gy * 2, pw * gx * 2) -> (K * ph * pw, gy * gx * 4), each bin's taps in (gy, gx, 2, 2) order."""
    k, rows, cols = outer.shape
    gy, gx = rows // (2 * ph), cols // (2 * pw)
    return outer.view(k, ph, gy, 2, pw, gx, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(k * ph * pw, -1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).contiguous().view(n * h * w, c)  # (N*H*W, C)


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_pool(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0) -> torch.Tensor:
    """RoIPool: input (N, C, H, W), boxes (K, 5) or list -> (K, C, out_h, out_w); empty bins are 0."""
    n, ch, h, w = input.shape
    rois, ph, pw = _prepare(input, boxes, output_size)
    k = len(rois)
    if k == 0:
        return input.new_zeros(0, ch, ph, pw)
    x1, y1, x2, y2 = _round_away(rois[:, 1:] * spatial_scale).to(torch.int64).unbind(1)
    rh = (y2 - y1 + 1).clamp(min=1).to(torch.float64)
    rw = (x2 - x1 + 1).clamp(min=1).to(torch.float64)

    def bounds(start, length, bins, size):  # (K, bins) each
        p = torch.arange(bins, device=input.device, dtype=torch.float64)[None, :]
        size_ = (length / bins)[:, None]
        lo = torch.floor(p * size_).to(torch.int64) + start[:, None]
        hi = torch.ceil((p + 1) * size_).to(torch.int64) + start[:, None]
        return lo.clamp(0, size), hi.clamp(0, size)

    hs, he = bounds(y1, rh, ph, h)
    ws, we = bounds(x1, rw, pw, w)
    lh, lw = max(int((he - hs).max()), 1), max(int((we - ws).max()), 1)
    feats = _channels_last(input)
    out = []
    step = max(1, (1 << 22) // max(1, ph * pw * lh * lw * ch))  # bound the gather's memory
    for s in range(0, k, step):
        sl = slice(s, s + step)
        rows = hs[sl, :, None] + torch.arange(lh, device=input.device)  # (k, ph, lh)
        cols = ws[sl, :, None] + torch.arange(lw, device=input.device)  # (k, pw, lw)
        inside = (rows < he[sl, :, None])[:, :, None, :, None] & (cols < we[sl, :, None])[:, None, :, None, :]
        idx = (
            (rois[sl, 0].to(torch.int64) * (h * w))[:, None, None, None, None]
            + rows.clamp(max=h - 1)[:, :, None, :, None] * w
            + cols.clamp(max=w - 1)[:, None, :, None, :]
        )
        vals = feats[idx.reshape(-1)].reshape(*idx.shape, ch)  # (k, ph, pw, lh, lw, C)
        vals = torch.where(inside[..., None], vals, torch.full_like(vals, -math.inf))
        best = vals.flatten(3, 4).max(3).values  # (k, ph, pw, C)
        empty = ~inside.flatten(3).any(3)
        out.append(torch.where(empty[..., None], torch.zeros_like(best), best))
    return torch.cat(out).permute(0, 3, 1, 2).contiguous()  # (K, C, ph, pw)
