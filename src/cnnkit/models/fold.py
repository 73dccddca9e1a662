"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch norm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma +
beta``; after a convolution it can be merged into that convolution's weights and bias, which removes a
full pass over the activations (and, under bf16 autocast, the casts to and from fp32 around it). On
EfficientNet-Lite0 at 288 px (64 images, two threads of a Xeon with AMX, bf16) the batch norms took
27% of the forward pass. The networks here call their layers from Python code, so the pairs are found
by running the network once: a batch norm whose input is the very tensor a convolution returned.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``model`` (in eval mode) with every foldable batch norm merged into its convolution.

    A ``BatchNorm2d`` is folded when, in one forward pass of ``example``, it ran once, on the output
    of a ``Conv2d`` that also ran once; it becomes ``nn.Identity``. The copy's answer on ``example``
    (every tensor of a tuple or dict) is checked against the original's in fp32, autocast or not
    (within ``atol``, relative to its largest value); where they differ, the unfolded copy is returned.

    Args:
        model: any network; it is not changed.
        example: an input batch (one image is enough) on the model's device.
        atol: the largest difference allowed, relative to the largest output value.

    Returns:
        (the copy, the number of batch norms folded).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> folded, n = fold_batchnorm(net, torch.rand(1, 3, 8, 8))
        >>> n, type(folded[1]).__name__
        (1, 'Identity')
    """
    net = copy.deepcopy(model).eval()
    if example.numel() == 0:  # nothing to find the pairs with
        return net, 0
    convs = {m for m in net.modules() if isinstance(m, nn.Conv2d)}
    norms = {m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats}
    calls: dict[nn.Module, int] = {}
    produced: dict[int, nn.Module] = {}  # id of a convolution's output -> the convolution
    kept: list[torch.Tensor] = []  # keeps those outputs alive, so that no id is reused
    pairs: dict[nn.Module, nn.Module] = {}  # batch norm -> convolution

    def after_conv(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        produced[id(output)] = module
        kept.append(output)

    def before_norm(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        conv = produced.get(id(inputs[0]))
        if conv is not None:
            pairs[module] = conv

    hooks = [m.register_forward_hook(after_conv) for m in convs]
    hooks += [m.register_forward_pre_hook(before_norm) for m in norms]
    fp32 = torch.autocast(example.device.type, enabled=False)  # found and checked in fp32, whatever the caller's
    try:
        with torch.no_grad(), fp32:
            reference = net(example)
    finally:
        for h in hooks:
            h.remove()
    pairs = {bn: conv for bn, conv in pairs.items() if calls[bn] == 1 and calls[conv] == 1}
    if not pairs:
        return net, 0
    parents = {child: (parent, name) for parent in net.modules() for name, child in parent.named_children()}
    with torch.no_grad(), fp32:
        for bn, conv in pairs.items():
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
            bias = conv.bias * scale + shift if conv.bias is not None else shift
            conv.weight.mul_(scale.reshape(-1, *[1] * (conv.weight.dim() - 1)))
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            parent, name = parents[bn]
            setattr(parent, name, nn.Identity())
        out = net(example)
    refs, news = _tensors(reference), _tensors(out)
    same = bool(refs) and len(refs) == len(news) and all(r.shape == n.shape for r, n in zip(refs, news))
    if not same or any(not _close(r, n, atol) for r, n in zip(refs, news)):
        return copy.deepcopy(model).eval(), 0  # a fresh copy: only a failed check pays for a second one
    return net, len(pairs)


def _close(ref: torch.Tensor, new: torch.Tensor, atol: float) -> bool:
    """Floats within ``atol`` of ``ref``'s largest value; other tensors (a mask, indices) equal."""
    if not (ref.is_floating_point() or ref.is_complex()):
        return torch.equal(ref, new)
    return not ref.numel() or not bool((new - ref).abs().max() > atol * max(1.0, float(ref.abs().max())))


def _tensors(out) -> list[torch.Tensor]:
    """The output itself, or every tensor of a tuple, list or dict output (a convolution's output that
    a network also returns, or uses beside its batch norm, changes with the folding)."""
    if isinstance(out, torch.Tensor):
        return [out]
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    return [v for v in values if isinstance(v, torch.Tensor)]
