"""MultiRocket: one layer of fixed dilated convolutions, four pooling operators, one linear layer.

Dempster, Schmidt & Webb 2021, "MINIROCKET: A very fast (almost) deterministic transform for time
series classification" (https://arxiv.org/abs/2012.08791), and Tan, Dempster, Bergmeir & Webb 2022,
"MultiRocket: multiple pooling operators and transformations for fast and effective time series
classification" (https://arxiv.org/abs/2102.00457).

The network is a 1-D CNN whose convolution weights are not learned:

- **84 kernels of length 9**, every choice of 3 of the 9 taps weighted 2 and the other 6 weighted
  -1 (each kernel sums to zero, so it answers to shape, not to level);
- **dilations** 1 ... (L - 1) / 8, spaced exponentially (at most 32 distinct), so that a kernel's
  receptive field reaches from 9 samples to the whole series;
- "same" zero padding for half the (kernel, dilation) pairs and none for the other half
  (alternating), as MiniRocket does;
- for each (kernel, dilation) several **biases**, quantiles of that kernel's response to one
  training series (:meth:`MultiRocket1d.fit_biases`: the only use of data before the classifier);
- each response minus each bias pooled four ways: the proportion of positive values (PPV), the mean
  of the positive values (MPV), the mean index of the positive values (MIPV, -1 when there are none)
  and the longest stretch of positive values (LSPV);
- the same on the series' first difference (MultiRocket's second representation);
- a linear layer ``fc`` on the standardised features (``mean``/``scale`` buffers).

Multichannel series: each (kernel, dilation) sums its response over a random subset of the channels
(MiniRocket's multivariate rule). Variable-length series arrive zero-padded to one length (the
reader's convention, :mod:`cnnkit.data.series`): each series is pooled over its own length, up to
its last non-zero sample, so that the features do not depend on how far a file's series were
padded (a test file's longest series sets its padding, not the training file's). The features'
order: representation, dilation, kernel, bias, then the four pools.

Hydra (Dempster, Schmidt & Webb 2023, "Hydra: competing convolutional kernels for fast and accurate
time series classification", https://arxiv.org/abs/2203.13652) adds a second kind of fixed
convolution (:class:`HydraBranch`): random kernels in groups of 8 that compete at each time step; its
counts, beside MultiRocket's features, make ``multirocket_hydra`` (the paper's MultiRocket-Hydra).

Input shape: (B, C, L). Output shape: (B, num_classes). ``forward_features`` returns (B, F).
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.models._common import Classifier, check_args
from cnnkit.models._registry import register_model

KERNEL = 9
POOLS = ("ppv", "mpv", "mipv", "lspv")
_LOW = -torch.finfo(torch.float32).max  # a response left out of the pooling: below every bias, and 0 times it is 0


def kernel_weights() -> torch.Tensor:
    """The 84 MiniRocket kernels: (84, 9), 2 at three taps and -1 at the other six."""
    rows = []
    for taps in itertools.combinations(range(KERNEL), 3):
        w = torch.full((KERNEL,), -1.0)
        w[list(taps)] = 2.0
        rows.append(w)
    return torch.stack(rows)


def dilations_for(length: int, per_kernel: int, max_dilations: int = 32) -> tuple[list[int], list[int]]:
    """MiniRocket's dilations for series of ``length`` and the biases each gets per kernel.

    Args:
        length: the series' length.
        per_kernel: biases a kernel gets over all its dilations.
        max_dilations: at most this many exponentially spaced dilations before duplicates are merged.

    Returns:
        (dilations, biases per kernel at each dilation); the second sums to ``per_kernel``.
    """
    n = max(1, min(per_kernel, max_dilations))
    top = math.log2(max(length - 1, 1) / (KERNEL - 1)) if length > KERNEL else 0.0
    raw = [int(2 ** (top * i / (n - 1))) if n > 1 else 1 for i in range(n)]
    dilations = sorted(set(raw))
    counts = [int(raw.count(d) * per_kernel / n) for d in dilations]
    i = 0
    while sum(counts) < per_kernel:  # the remainder, one at a time from the smallest dilation
        counts[i % len(counts)] += 1
        i += 1
    return dilations, counts


def quantile_sequence(n: int) -> torch.Tensor:
    """The low-discrepancy quantiles MiniRocket draws its biases at: (k * golden ratio) mod 1, k = 1..n."""
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return (k * (math.sqrt(5) + 1) / 2) % 1


class FixedConv1d(nn.Conv1d):
    """A dilated, zero-padded ("same") convolution whose answer is laid out time-first.

    It computes what :class:`torch.nn.Conv1d` computes, as one matrix product of the series' taps
    (L, B, C * 9) with the kernels (C * 9, K), and returns the (B, K, L) result as a view of an
    (L, B, K) tensor: the pooling walks over time, and each of its steps then reads one contiguous
    (B, K) block.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        d, pad = self.dilation[0], self.padding[0]
        k = self.weight.shape[0]
        taps = torch.arange(length, device=x.device)[:, None] + d * torch.arange(KERNEL, device=x.device)
        xt = nn.functional.pad(x, (pad, pad)).permute(2, 0, 1)  # (L + 2 pad, B, C)
        u = xt[taps].permute(0, 2, 3, 1).reshape(length, b, c * KERNEL)  # (L, B, C * 9)
        return (u @ self.weight.view(k, c * KERNEL).T).permute(1, 2, 0)  # (B, K, L), stored (L, B, K)


class RocketBranch(nn.Module):
    """The fixed convolutions of one representation (the series or its difference) and their pooling.

    Input shape: (B, C, L) and the (B,) series lengths. Output shape: (B, 84 * biases * 4).
    """

    def __init__(self, in_channels: int, length: int, per_kernel: int, generator: torch.Generator):
        super().__init__()
        self.dilations, self.counts = dilations_for(length, per_kernel)
        w = kernel_weights()
        k = w.shape[0]
        convs, flags = [], []
        for i, d in enumerate(self.dilations):
            if in_channels == 1:
                mask = torch.ones(k, 1)
            else:  # a random subset of the channels per kernel (MiniRocket's multivariate rule)
                limit = min(in_channels, 9)
                sizes = torch.floor(2 ** (torch.rand(k, generator=generator) * math.log2(limit + 1))).long()
                mask = torch.zeros(k, in_channels)
                for j, s in enumerate(sizes.clamp(1, in_channels).tolist()):
                    mask[j, torch.randperm(in_channels, generator=generator)[:s]] = 1.0
            conv = FixedConv1d(in_channels, k, KERNEL, padding=(KERNEL - 1) // 2 * d, dilation=d, bias=False)
            conv.weight.data.copy_(w[:, None, :] * mask[:, :, None])  # (84, C, 9)
            conv.weight.requires_grad_(False)  # fixed, never trained
            convs.append(conv)
            flags.append(torch.tensor([(i + j) % 2 for j in range(k)], dtype=torch.bool))  # True: valid part only
        self.convs = nn.ModuleList(convs)  # one per dilation: (B, C, L) -> (B, 84, L)
        self.register_buffer("valid_only", torch.cat(flags))  # (dilations * 84,)
        self.register_buffer("bias", torch.zeros(k * sum(self.counts)))  # fitted by fit_biases
        self.kernels = k
        self.num_features = k * sum(self.counts) * len(POOLS)

    @torch.no_grad()
    def fit_biases(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> None:
        """Each (kernel, dilation)'s biases: quantiles of its response to one random training series
        (over that series' own length)."""
        k = self.kernels
        q = quantile_sequence(k * sum(self.counts)).to(x.device, x.dtype)
        t = torch.arange(x.shape[2], device=x.device)
        out, start = [], 0
        for i, c in enumerate(self.counts):
            pick = torch.randint(len(x), (k,), generator=generator).to(x.device)
            r = self.convs[i](x[pick])  # (84, 84, L): kernel j's response on the row it picked is [j, j]
            r = r[torch.arange(k), torch.arange(k)]  # (84, L)
            n = lengths[pick]  # (84,) each picked series' length
            r = r.masked_fill(t[None, :] >= n[:, None], float("inf")).sort(dim=1).values  # its padding last
            qs = q[start : start + k * c].view(k, c) * (n[:, None] - 1).to(q.dtype)  # positions in the sorted
            lo = qs.floor().long()
            hi = torch.minimum(lo + 1, (n[:, None] - 1).clamp(min=0))
            frac = qs - lo
            out.append((r.gather(1, lo) * (1 - frac) + r.gather(1, hi) * frac).flatten())
            start += k * c
        self.bias.copy_(torch.cat(out))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, start = [], 0
        for i, c in enumerate(self.counts):
            r = self.convs[i](x).permute(2, 0, 1)  # (L, B, 84), contiguous
            flags = self.valid_only[i * self.kernels : (i + 1) * self.kernels]
            n = _leave_out(r, lengths, (KERNEL - 1) // 2 * self.dilations[i], flags)
            bias = self.bias[start * self.kernels : (start + c) * self.kernels].view(self.kernels, c)
            feats.append(_pool(r, n, bias))  # (B, 84 * c * 4)
            start += c
        return torch.cat(feats, dim=1)


def _leave_out(r: torch.Tensor, lengths: torch.Tensor, pad: int, flags: torch.Tensor) -> torch.Tensor:
    """Set the positions of ``r`` (L, B, K) that are not pooled to ``_LOW``, in place, and return (B, K)
    the number pooled: a series' padding, and for the kernels with ``flags`` (valid part only) the
    first and last ``pad`` positions, whose taps reach into the zero padding. A series no longer
    than the receptive field (2 ``pad``) is pooled whole."""
    whole = lengths <= 2 * pad  # (B,)
    first = torch.where(whole, 0, pad)  # (B,) a flagged kernel's first position pooled
    end = torch.where(whole, lengths, lengths - pad)  # (B,) ... and its end
    if pad:
        r[:pad].masked_fill_((~whole[:, None] & flags[None, :])[None], _LOW)
    tail = 0 if r.is_meta else int(end.min())  # from here on some position is left out (a shape-only run: all)
    if tail < r.shape[0]:
        stop = torch.where(flags[None, :], end[:, None], lengths[:, None])  # (B, K)
        t = torch.arange(tail, r.shape[0], device=r.device)
        r[tail:].masked_fill_(t[:, None, None] >= stop[None], _LOW)
    return torch.where(flags[None, :], (end - first)[:, None], lengths[:, None])


def series_lengths(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L) zero-padded series -> (B,) lengths: up to the last sample that is not 0 in some channel
    (the reader pads with exact zeros; an all-zero series keeps its whole length)."""
    nonzero = (x != 0).any(dim=1)  # (B, L)
    last = (nonzero * torch.arange(1, x.shape[2] + 1, device=x.device)).amax(dim=1)
    return torch.where(last > 0, last, x.shape[2])


def first_difference(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, C, L) zero-padded series, (B,) lengths -> (B, C, L - 1) first differences, 0 from each
    series' own end on: the step from its last sample down to the padding is not part of it, so a
    series padded further, or not at all, has the same differences."""
    keep = torch.arange(x.shape[2] - 1, device=x.device)[None, :] < (lengths - 1)[:, None]
    return x.diff(dim=2) * keep[:, None, :].to(x.dtype)


def _pool(r: torch.Tensor, n: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(L, B, K) responses (``_LOW`` where a position is left out), (B, K) positions pooled, (K, c)
    biases -> (B, K * c * 4): PPV, MPV, MIPV, LSPV of each response minus each of its biases.

    One pass over time: each step compares one (B, K) block of the responses with every bias and
    updates five running sums for every (series, bias, kernel) at once, so no (B, K, c, L) tensor is
    ever made and each step is a handful of vectorised operations on counters that stay in cache.
    """
    length, b, k = r.shape
    c = bias.shape[1]
    shape = (b, c, k)  # kernels innermost: each step's (B, 1, K) block meets the biases contiguously
    bias = bias.T.contiguous()  # (c, K)
    above, z = r.new_empty(shape), r.new_empty(shape)
    count, positive, index = r.new_zeros(shape), r.new_zeros(shape), r.new_zeros(shape)
    run, longest = r.new_zeros(shape), r.new_zeros(shape)
    grad = torch.is_grad_enabled() and r.requires_grad  # MPV's gradient: keep each step's z for backward
    for i in range(length):
        if grad:
            z = r[i, :, None, :] - bias
            above = (z > 0).to(r.dtype)
        else:
            torch.sub(r[i, :, None, :], bias, out=z)
            torch.gt(z, 0, out=above)  # 1.0 where the response is above the bias
        count.add_(above)
        positive.addcmul_(z, above)  # the sum of the positive parts
        index.add_(above, alpha=i)
        torch.addcmul(above, run, above, out=run)  # the current stretch: one longer, or 0
        torch.maximum(longest, run, out=longest)
    some = count.clamp(min=1)
    ppv = count / n.to(r.dtype).clamp(min=1)[:, None, :]
    mpv = positive / some
    mipv = (index / some).masked_fill(count == 0, -1.0)
    return torch.stack([ppv, mpv, mipv, longest], dim=3).transpose(1, 2).flatten(1)  # (B, K, c, 4) in order


HYDRA_KERNELS = 8  # kernels per group, competing at each time step (Hydra's k)
HYDRA_CHUNK = 1 << 22  # responses held at once (16 MiB, about a cache's size): a batch is transformed in slices


class HydraBranch(nn.Module):
    """Hydra's competing kernels: ``groups`` groups of 8 random length-9 kernels at each dilation.

    - **Kernels**: standard normal weights, each (kernel, channel) row centred and scaled to unit
      absolute sum; fixed, never trained.
    - **Dilations** 1, 2, 4, ... up to (L - 1) / 8, each with "same" zero padding.
    - Half the groups read the series, half its first difference (all of them the series when
      ``groups`` is 1).
    - **Counting**: at each time step, within each group, the kernel with the largest response adds
      that response to its first feature and the kernel with the smallest adds 1 to its second.
      Only the positions within a series' own length count (:func:`series_lengths`).
    - **Channels**: with C > 1 channels each group reads a random subset of ``clip(C // 2, 2, 8)``
      channels (at most C), its kernels' responses summed over them.

    Input shape: (B, C, L), the (B,) series lengths. Output shape: (B, dilations * groups * 8 * 2),
    non-negative (the features are counts and sums of maxima; :class:`MultiRocket1d` scales them).
    """

    def __init__(self, in_channels: int, length: int, groups: int, generator: torch.Generator):
        super().__init__()
        top = int(math.log2((length - 1) / (KERNEL - 1))) if length > KERNEL else 0
        self.dilations = [2**i for i in range(top + 1)]
        self.split = 2 if groups > 1 else 1  # representations: the series, then its difference
        self.groups = groups // self.split  # groups per representation
        k, g = HYDRA_KERNELS, self.groups
        w = torch.randn(len(self.dilations), self.split, g * k, in_channels, KERNEL, generator=generator)
        w = w - w.mean(dim=-1, keepdim=True)
        w = w / w.abs().sum(dim=-1, keepdim=True).clamp(min=1e-12)
        if in_channels > 1:
            picks = min(in_channels, max(2, min(8, in_channels // 2)))
            mask = torch.zeros(len(self.dilations), self.split, g, in_channels)
            for idx in itertools.product(range(len(self.dilations)), range(self.split), range(g)):
                mask[idx][torch.randperm(in_channels, generator=generator)[:picks]] = 1.0
            w = w * mask.repeat_interleave(k, dim=2)[..., None]
        self.register_buffer("weight", w)  # (dilations, representations, groups * 8, C, 9)
        self.num_features = len(self.dilations) * self.split * g * k * 2

    def forward(self, x: torch.Tensor, diff: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, _, length = x.shape
        rows = max(1, HYDRA_CHUNK // (self.groups * HYDRA_KERNELS * length))
        if b > rows:
            parts = [self(x[s : s + rows], diff[s : s + rows], lengths[s : s + rows]) for s in range(0, b, rows)]
            return torch.cat(parts)
        t = torch.arange(length, device=x.device)[None, :]
        inputs = [(x, lengths), (diff, (lengths - 1).clamp(min=1))][: self.split]
        valids = [(t < n[:, None]).to(x.dtype)[:, None] for _, n in inputs]  # (B, 1, L): the steps that count
        feats = []
        for i, d in enumerate(self.dilations):
            for rep, ((inp, _), valid) in enumerate(zip(inputs, valids)):
                z = nn.functional.conv1d(inp, self.weight[i, rep], padding=(KERNEL - 1) // 2 * d, dilation=d)
                z = z.view(b, self.groups, HYDRA_KERNELS, -1)  # (B, groups, 8, L)
                top, top_at = z.max(dim=2)  # (B, groups, L): the winner of each group at each step
                low_at = z.min(dim=2).indices  # not argmin: its strided reduction is three times slower
                wins = z.new_zeros(b, self.groups, HYDRA_KERNELS).scatter_add_(2, top_at, top * valid)
                losses = z.new_zeros(b, self.groups, HYDRA_KERNELS).scatter_add_(2, low_at, valid.expand_as(top))
                feats += [wins.flatten(1), losses.flatten(1)]
        return torch.cat(feats, dim=1)


class MultiRocket1d(Classifier):
    """MultiRocket's fixed convolutional transform (series and first difference), standardisation and ``fc``.

    Build it for the training series' channels and length, call :meth:`fit_biases` with the training
    series, then fit ``fc`` (``cnnkit sequence train`` solves a ridge regression for it).
    ``hydra`` > 0 adds that many groups of Hydra's competing kernels (:class:`HydraBranch`), whose
    features are scaled as the Hydra paper scales them: the square root of each count, standardised,
    and 0 where the count is 0 (``sparse_features`` says which columns they are).

    Input shape: (B, C, L), zero-padded after each series' end. Output shape: (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        length: int = 128,
        features: int = 50_000,
        seed: int = 0,
        hydra: int = 0,
    ):
        super().__init__()
        check_args(num_classes, in_channels)
        if length < 2:
            raise CnnkitError(f"MultiRocket needs series of at least 2 samples; received: length={length}")
        if hydra < 0:
            raise CnnkitError(f"hydra is a number of kernel groups, 0 or more; received: hydra={hydra}")
        per_kernel = max(1, features // (2 * len(POOLS) * len(kernel_weights())))
        g = torch.Generator().manual_seed(seed)
        self.raw = RocketBranch(in_channels, length, per_kernel, g)
        self.diff = RocketBranch(in_channels, length - 1, per_kernel, g)
        self.hydra = HydraBranch(in_channels, length, hydra, g) if hydra else None
        dense = self.raw.num_features + self.diff.num_features
        self.num_features = dense + (self.hydra.num_features if self.hydra is not None else 0)
        self.sparse_features = slice(dense, self.num_features)  # Hydra's columns (empty without it)
        self.register_buffer("mean", torch.zeros(self.num_features))
        self.register_buffer("scale", torch.ones(self.num_features))
        self.seed = seed
        self._init_head(num_classes)

    def _init_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        nn.init.zeros_(self.fc.weight) if num_classes else None
        nn.init.zeros_(self.fc.bias) if num_classes else None

    @torch.no_grad()
    def fit_biases(self, x: torch.Tensor) -> None:
        """The biases of every (kernel, dilation) from the training series ``x`` (N, C, L), seeded by ``seed``."""
        g = torch.Generator().manual_seed(self.seed + 1)
        n = series_lengths(x)
        self.raw.fit_biases(x, n, g)
        self.diff.fit_biases(first_difference(x, n), (n - 1).clamp(min=1), g)

    def column_sets(self) -> dict[str, torch.Tensor]:
        """Named sets of feature columns that a linear layer may be restricted to: ``all``; ``ppv``
        (the proportion of positive values of both representations: MiniRocket's one pool);
        ``minirocket`` (that pool of the series alone, as MiniRocket pools) and, with Hydra, ``hydra``
        (its counts alone)."""
        dense = self.raw.num_features + self.diff.num_features
        sets = {
            "all": torch.arange(self.num_features),
            "ppv": torch.arange(0, dense, len(POOLS)),
            "minirocket": torch.arange(0, self.raw.num_features, len(POOLS)),
        }
        if self.hydra is not None:
            sets["hydra"] = torch.arange(dense, self.num_features)
        return sets

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) series, zero-padded after their ends -> (B, F) pooled features, standardised.
        Each series is pooled over its own length (:func:`series_lengths`), so that padding a
        series further changes nothing. Always in float32, autocast or not: the pools count up to L
        positions, which bfloat16's 8-bit mantissa does not hold exactly."""
        kind = x.device.type
        with torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else contextlib.nullcontext():
            x = x.float()
            n = series_lengths(x)
            diff = first_difference(x, n)
            parts = [self.raw(x, n), self.diff(diff, (n - 1).clamp(min=1))]
            if self.hydra is None:
                return (torch.cat(parts, dim=1) - self.mean) / self.scale
            counts = self.hydra(x, nn.functional.pad(diff, (0, 1)), n).clamp(min=0).sqrt()
            f = (torch.cat([*parts, counts], dim=1) - self.mean) / self.scale
            f[:, self.sparse_features] *= counts != 0  # a count of 0 stays 0 (Hydra's sparse scaling)
            return f

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh (zero) linear layer with ``num_classes`` outputs (0: Identity)."""
        check_args(num_classes, 1)
        self._init_head(num_classes)
        self.fc.to(self.mean.device)


@register_model(input_size=(1, 128), paper="Tan et al. 2022", family="series", task="classify")
def multirocket(
    num_classes: int = 2, in_channels: int = 1, length: int = 128, features: int = 50_000, seed: int = 0
) -> MultiRocket1d:
    """MultiRocket: 84 fixed length-9 kernels at exponentially spaced dilations, on the series and its
    difference, four pools per bias (PPV, MPV, MIPV, LSPV), about ``features`` features, linear."""
    return MultiRocket1d(num_classes, in_channels, length, features, seed)


@register_model(input_size=(1, 128), paper="Dempster et al. 2023", family="series", task="classify")
def multirocket_hydra(
    num_classes: int = 2,
    in_channels: int = 1,
    length: int = 128,
    features: int = 50_000,
    seed: int = 0,
    hydra: int = 64,
) -> MultiRocket1d:
    """MultiRocket-Hydra: MultiRocket's features beside Hydra's counts (64 groups of 8 competing
    random kernels per dilation, on the series and its difference), one linear layer on both."""
    return MultiRocket1d(num_classes, in_channels, length, features, seed, hydra)
