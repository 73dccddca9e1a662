"""Dense heads turned into convolutions: a classifier trained on small images becomes a fully
convolutional network (FCN) that slides over a larger image in one pass.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (2015),
https://arxiv.org/abs/1411.4038 ; Géron, *Hands-On ML*, ch. 14, exercise 7.

The recipe: in an ``nn.Sequential`` holding ``Flatten -> Linear -> (ReLU/Dropout...) -> Linear ...``
the first ``Linear`` becomes a ``Conv2d`` whose kernel is the size of the map the ``Flatten``
received (no padding), and every later ``Linear`` a 1x1 ``Conv2d``; their trained weights are
reshaped, not retrained. ``Flatten`` goes away. An adaptive pooling layer right before the
``Flatten`` is made a fixed-size pooling so that a larger image gives a larger map.
On the training size the converted network's output is a 1x1 map equal to the original's
logits; on a larger image it is a map of class scores, one per window at the network's
total stride -- the same numbers as classifying every window separately, computed once, as long
as the convolutions do not pad (padding makes a window's border differ from the image's inside).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError

# layers that act on each feature independently: they work unchanged on (B, C, H, W) maps
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.PReLU,
    nn.Dropout,
    nn.Identity,
)


_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def to_fcn(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> nn.Module:
    """A copy of ``model`` with every Flatten+Linear head turned into convolutions.

    Args:
        model: an ``nn.Sequential``, or any module whose dense head sits in an ``nn.Sequential``
            that starts with (or contains) an ``nn.Flatten``. The model is not modified.
        input_size: ``(C, H, W)`` the model was trained on; a forward pass at this size finds the
            size of each map a ``Flatten`` receives. Defaults to ``model.input_size`` if it has one.

    Returns:
        The converted model, in the mode ``model`` was in. Its output is ``(B, classes, h, w)``:
        ``(B, classes, 1, 1)`` on ``input_size`` and larger on a larger image.

    Raises:
        CnnkitError: a ``Linear`` not reached through a ``Flatten``, a layer between them that is
            not elementwise, or no dense head at all; the message names the layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        >>> to_fcn(net, (1, 8, 8))(torch.zeros(1, 1, 12, 12)).shape
        torch.Size([1, 10, 5, 5])
    """
    input_size = _check_input_size(model, input_size)
    if not any(isinstance(m, (nn.Linear, nn.Flatten)) for m in model.modules()):
        raise CnnkitError(
            f"{type(model).__name__} has no Flatten+Linear head to convert (it may already be fully convolutional)"
        )
    map_sizes = _trace_flatten_inputs(model, input_size)  # id(Flatten) -> (C, h, w) it received
    fcn = copy.deepcopy(model)
    names = {id(m): n for n, m in model.named_modules()}
    originals = dict(zip((id(m) for m in fcn.modules()), model.modules()))  # copy id -> original
    converted: set[int] = set()
    for container in list(fcn.modules()):
        if isinstance(container, nn.Sequential):
            _convert_sequential(container, map_sizes, originals, names, converted)
    leftover = [
        names[id(originals[id(m)])]
        for m in fcn.modules()
        if isinstance(m, (nn.Linear, nn.Flatten)) and id(m) not in converted
    ]
    if leftover:
        raise CnnkitError(
            f"cannot convert layers {', '.join(leftover)}: a Linear must follow an "
            "nn.Flatten in the same nn.Sequential, with only elementwise layers "
            "(ReLU, Dropout, ...) between the Linears; restructure the head that way "
            "(a flatten inside forward(), like torchvision's ResNet, cannot be converted)"
        )
    return fcn


def total_stride(model: nn.Module) -> int:
    """Product of the strides of a chain of conv and pooling layers: the step, in input pixels,
    between neighbouring cells of a converted network's output map (valid for sequential chains)."""
    stride = 1
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            s = m.stride if isinstance(m.stride, (tuple, list)) else (m.stride, m.stride)
            if s[0] != s[1]:
                raise CnnkitError(f"total_stride needs square strides, got {tuple(s)} in {m}")
            stride *= int(s[0])
    return stride


def _check_input_size(model, input_size):
    input_size = input_size if input_size is not None else getattr(model, "input_size", None)
    if input_size is None:
        raise CnnkitError("to_fcn needs the training input size: pass input_size=(C, H, W), e.g. (1, 28, 28) for MNIST")
    if len(tuple(input_size)) != 3 or any(int(v) <= 0 for v in input_size):
        raise CnnkitError(
            f"input_size must be (C, H, W) with positive sizes, got input_size={tuple(input_size)}; e.g. (3, 224, 224)"
        )
    return tuple(int(v) for v in input_size)


@contextmanager
def _hooks(modules, hook):
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _trace_flatten_inputs(model, input_size) -> dict[int, tuple[int, ...]]:
    """Run one forward at ``input_size`` and record the (C, h, w) each Flatten and adaptive pool gets."""
    seen: dict[int, tuple[int, ...]] = {}

    def record(module, inputs, output):
        seen[id(module)] = tuple(inputs[0].shape[1:])

    watched = [m for m in model.modules() if isinstance(m, (nn.Flatten, *_ADAPTIVE))]
    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(
        1,
        *input_size,
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None else torch.float32,
    )
    try:
        model.eval()
        with _hooks(watched, record), torch.no_grad():
            model(x)
    except RuntimeError as exc:
        raise CnnkitError(
            f"a forward pass at input_size={input_size} failed ({exc}); pass the "
            "(C, H, W) size the model was trained on"
        ) from None
    finally:
        model.train(was_training)
    return seen


def _convert_sequential(seq: nn.Sequential, map_sizes, originals, names, converted) -> None:
    """Rewrite one Sequential in place: [AdaptivePool] Flatten Linear (elementwise*) Linear ..."""
    children = list(seq._modules.items())
    i = 0
    while i < len(children):
        key, flat = children[i]
        original = originals[id(flat)]
        if not isinstance(flat, nn.Flatten) or id(original) not in map_sizes:
            i += 1
            continue
        where = names[id(original)]
        if flat.start_dim != 1 or flat.end_dim != -1:
            raise CnnkitError(
                f"cannot convert {where} (Flatten(start_dim={flat.start_dim}, "
                f"end_dim={flat.end_dim})): only Flatten(1, -1) before a Linear is supported"
            )
        c, h, w = map_sizes[id(original)]  # the map the Flatten received, e.g. (64, 3, 3)
        if i > 0 and isinstance(children[i - 1][1], _ADAPTIVE):
            pkey, pool = children[i - 1]
            seq._modules[pkey] = _fixed_pool(pool, map_sizes[id(originals[id(pool)])], names[id(originals[id(pool)])])
        seq._modules[key] = nn.Identity()
        converted.add(id(flat))
        first, j = True, i + 1
        while j < len(children):
            jkey, layer = children[j]
            if isinstance(layer, nn.Linear):
                kernel = (h, w) if first else (1, 1)
                seq._modules[jkey] = _linear_to_conv(layer, kernel, names[id(originals[id(layer)])])
                converted.add(id(layer))
                first = False
            elif isinstance(layer, (nn.Softmax, nn.LogSoftmax)) and layer.dim == 1:
                pass  # over the class dimension: the same on (B, K) and (B, K, h, w)
            elif isinstance(layer, nn.BatchNorm1d):
                seq._modules[jkey] = _bn1d_to_bn2d(layer)
            elif not isinstance(layer, _ELEMENTWISE):
                if first:
                    raise CnnkitError(
                        f"cannot convert {names[id(originals[id(layer)])]} "
                        f"({type(layer).__name__}) between {where} (Flatten) and the "
                        "first Linear: only elementwise layers (ReLU, Dropout) may sit there"
                    )
                break  # the head ends here; what follows works on maps by itself or fails loudly
            j += 1
        if first:
            raise CnnkitError(f"cannot convert {where}: the Flatten is not followed by a Linear in its nn.Sequential")
        i = j


def _linear_to_conv(linear: nn.Linear, kernel: tuple[int, int], where: str) -> nn.Conv2d:
    """Linear(C*h*w -> K) == Conv2d(C -> K, kernel (h, w), no padding) on a (C, h, w) map."""
    out_f, in_f = linear.weight.shape
    kh, kw = kernel
    if in_f % (kh * kw):
        raise CnnkitError(
            f"cannot convert {where} (Linear in_features={in_f}): it does not match "
            f"a flattened map of size {kh}x{kw}; check input_size"
        )
    conv = nn.Conv2d(
        in_f // (kh * kw),
        out_f,
        kernel,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        # Flatten orders features (C, h, w) row-major, exactly the layout of a conv kernel
        conv.weight.copy_(linear.weight.reshape(out_f, in_f // (kh * kw), kh, kw))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    conv.train(linear.training)
    return conv


def _bn1d_to_bn2d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device=bn.weight.device if bn.affine else None,
    )
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new


def _fixed_pool(pool: nn.Module, in_size: tuple[int, ...], where: str) -> nn.Module:
    """An adaptive pool as a fixed one that equals it on the training size and slides on larger maps."""
    _, h, w = in_size
    out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
    oh, ow = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
    if (oh, ow) == (h, w):
        return nn.Identity()  # e.g. VGG's AdaptiveAvgPool2d(7) on a 7x7 map
    cls = nn.AvgPool2d if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.MaxPool2d
    if (oh, ow) == (1, 1):
        return cls((h, w), stride=1)  # global pooling -> a window of the training map, sliding by 1
    if h % oh or w % ow:
        raise CnnkitError(
            f"cannot convert {where} ({type(pool).__name__}({out})): its {h}x{w} input "
            f"at the training size is not a multiple of its output; use a fixed pooling"
        )
    return cls((h // oh, w // ow), stride=(h // oh, w // ow))
