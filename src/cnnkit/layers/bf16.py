"""Which convolutions run in fp32 although CPU bf16 autocast is on, and the guard that makes any
network's convolutions follow that rule in training.

Two kinds of convolution are kept out of oneDNN's bf16 kernels on a CPU:

- **A kernel that overhangs the data** (:func:`kernel_overhangs`): an extent of the data it slides
  over smaller than the kernel's dilated extent, such as a 3x3x3 convolution over a clip's last
  two frames, a stride-2 convolution over a one-pixel-wide map, or a 4x4 transposed convolution
  from a 1x1 latent. With PyTorch 2.13 on an AMD EPYC Zen 5 (AVX512-BF16, no AMX), oneDNN's bf16
  weight gradient for such shapes (``jit_bf16:avx512_core_bf16``, ``backward_weights``) is wrong,
  often inf or NaN, and for some it writes past its buffer. In sweeps of about 6,000 shapes (1-,
  2- and 3-D, plain and transposed, both memory layouts), every weight gradient that came out
  wrong had such an extent (for a transposed convolution, in its input or its output); none other
  did. Such layers are small: fp32 costs little.
- **A depthwise convolution whose backward pass is faster in fp32** (:func:`depthwise_in_fp32`): for
  speed, not correctness.

A depthwise convolution with a kernel wider than 3 whose filters train stays in bf16 in cnnkit's own
layers, with its weight gradient taken as 3x3 pieces (:func:`wide_depthwise_bf16`): oneDNN's bf16
weight gradient of a 5x5 depthwise convolution is several times its 3x3 one per tap.

cnnkit's own padded and depthwise layers apply the rule in their ``forward`` (:func:`conv_forward`);
:func:`guard_bf16` applies it to every other convolution module of a network, which the engine does
before it trains in bf16 on a CPU.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def is_depthwise(conv: nn.Module) -> bool:
    """A convolution that filters each input channel on its own (``groups == in_channels > 1``)."""
    return isinstance(conv, nn.modules.conv._ConvNd) and conv.groups > 1 and conv.groups == conv.in_channels


def wide_depthwise_bf16(conv: nn.Module, x: torch.Tensor) -> bool:
    """A 2-D depthwise convolution with an odd kernel wider than 3 whose filters take a gradient under
    CPU bf16 autocast, which :func:`conv_forward` runs in bf16 with its weight gradient as 3x3 pieces
    (:class:`_WideDepthwise`) instead of in fp32. Not when its input takes a gradient through a
    stride (that stays in fp32: :func:`depthwise_in_fp32`) or its kernel overhangs the data."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and torch.is_grad_enabled()
        and isinstance(conv, nn.Conv2d)
        and is_depthwise(conv)
        and conv.out_channels == conv.in_channels
        and conv.weight.requires_grad
        and max(conv.kernel_size) > 3
        and all(k % 2 == 1 for k in conv.kernel_size)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not (x.requires_grad and max(conv.stride) > 1)
        and not kernel_overhangs(conv, x)
    )


class _WideDepthwise(torch.autograd.Function):
    """A depthwise convolution in bf16 whose weight gradient is a sum of 3x3 pieces.

    Its weight gradient is, tap by tap, the gradient of the output against the input's window shifted
    by that tap. A 3x3 convolution over the input shifted by (a, b) has the taps (a..a+2, b..b+2)
    of the wide kernel, so 3x3 weight gradients at the offsets 0, 2, ..., k-3 cover every tap of a
    k x k kernel (a 5x5 one: four). oneDNN's 3x3 depthwise weight gradient in bf16 is its fast
    kernel: on an AMD Zen 5 (AVX512-BF16, two threads, batch 8, channels-last), over 672 x 20 x 20
    maps, 1.9 ms against 16.5 ms for the 5x5 one (and 5.3 ms in fp32). The values are the 5x5
    kernel's up to bf16 rounding: each piece sums its taps in fp32 and rounds once, as it does.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, channels = list(ctx.stride), list(ctx.padding), x.shape[1]
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        grad = grad.contiguous(memory_format=layout)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, [1, 1], False, [0, 0], channels, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            (ph, pw), (sh, sw) = padding, stride
            padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
            rows, cols = (grad.shape[2] - 1) * sh + 3, (grad.shape[3] - 1) * sw + 3
            piece = torch.empty(channels, 1, 3, 3, dtype=x.dtype, device=x.device).contiguous(
                memory_format=layout
            )  # shape only
            dw = torch.empty_like(weight)
            kh, kw = weight.shape[2:]
            for a in range(0, kh - 2, 2):  # 3x3 blocks at offsets 0, 2, ..., k - 3: every tap
                for b in range(0, kw - 2, 2):
                    window = padded[:, :, a : a + rows, b : b + cols].contiguous(memory_format=layout)
                    dw[:, :, a : a + 3, b : b + 3] = torch.ops.aten.convolution_backward(
                        grad, window, piece, None, stride, [0, 0], [1, 1], False, [0, 0], channels, [False, True, False]
                    )[1]
        return dx, dw, None, None


def wide_depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` on ``x`` in bf16 through :class:`_WideDepthwise` (where :func:`wide_depthwise_bf16`)."""
    bf16 = torch.bfloat16
    y = _WideDepthwise.apply(x.to(bf16), conv.weight.to(bf16), tuple(conv.stride), tuple(conv.padding))
    return y if conv.bias is None else y + conv.bias.to(bf16).view(1, -1, 1, 1)


def depthwise_in_fp32(conv: nn.Module, x: torch.Tensor) -> bool:
    """A depthwise convolution (one group per input channel) whose backward pass oneDNN runs faster
    in fp32 than in bf16: a strided one whose input ``x`` takes a gradient, or one with a kernel wider
    than 3 whose filters take one. On an AMD Zen 5 (AVX512-BF16, no AMX), two threads, a batch of 8:

    - the input gradient of a 3x3 stride-2 depthwise over 240 x 41 x 41 maps: 10.1 ms in bf16,
      2.6 ms in fp32 with the casts; of a 5x5 stride-2 one over 144 x 83 x 83: 20.8 against 6.9 ms;
    - the weight gradient of a 5x5 stride-1 one over 672 x 20 x 20: 20.4 against 10.4 ms (on a Xeon
      with AMX, batch 4: 34 against 4.5 ms);
    - everything else, the forward pass included, is faster in bf16 (a 5x5 stride-1 input gradient
      with frozen filters: 2.0 against 4.7 ms).

    So without gradients (inference, a frozen stem) every depthwise convolution stays in bf16.
    """
    if not is_depthwise(conv) or conv.transposed or not torch.is_grad_enabled():
        return False
    strided_input = x.requires_grad and max(conv.stride) > 1
    wide_filters = conv.weight.requires_grad and max(conv.kernel_size) > 3
    return strided_input or wide_filters


def kernel_overhangs(conv: nn.Module, x: torch.Tensor) -> bool:
    """Is the data ``conv``'s kernel slides over smaller than the kernel's dilated extent in some dimension?

    For ``nn.Conv1d/2d/3d`` that is the input ``x``; for ``nn.ConvTranspose1d/2d/3d``, whose weight
    gradient is a convolution over its output, the input or the output. ``x`` is (B, C, *spatial) or
    (C, *spatial).

    >>> kernel_overhangs(nn.Conv3d(8, 8, 3, padding=1), torch.zeros(1, 8, 2, 16, 16))  # two frames
    True
    >>> kernel_overhangs(nn.Conv2d(8, 8, 3, padding=1), torch.zeros(1, 8, 3, 3))
    False
    """
    dims = len(conv.kernel_size)
    spans = [(k - 1) * d + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
    sizes = x.shape[-dims:]
    if any(n < s for n, s in zip(sizes, spans)):
        return True
    if not conv.transposed:
        return False
    outs = [
        (n - 1) * st - 2 * p + s + op
        for n, st, p, s, op in zip(sizes, conv.stride, conv.padding, spans, conv.output_padding)
    ]
    return any(o < s for o, s in zip(outs, spans))


def bf16_conv_in_fp32(conv: nn.Module, x: torch.Tensor) -> bool:
    """True when ``conv`` should run in fp32 on ``x`` although CPU bf16 autocast is on: its kernel
    overhangs the data (:func:`kernel_overhangs`), or it is a depthwise convolution whose backward
    pass is faster in fp32 (:func:`depthwise_in_fp32`). False outside CPU autocast."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and (depthwise_in_fp32(conv, x) or kernel_overhangs(conv, x))
    )


def run_conv(conv: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``forward(x)``, with autocast off and ``x`` in fp32 where :func:`bf16_conv_in_fp32` says so."""
    if bf16_conv_in_fp32(conv, x):
        with torch.autocast("cpu", enabled=False):
            return forward(x.float())
    return forward(x)


def conv_forward(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv._conv_forward`` on ``x``: through :func:`wide_depthwise` where :func:`wide_depthwise_bf16`
    says so, else in fp32 where :func:`bf16_conv_in_fp32` does. A class whose ``forward`` calls it
    sets ``bf16_rule_in_forward = True``: :func:`guard_bf16` leaves it as it is."""
    if wide_depthwise_bf16(conv, x):
        return wide_depthwise(conv, x)
    return run_conv(conv, x, lambda v: conv._conv_forward(v, conv.weight, conv.bias))


_GUARDED: dict[type, type] = {}


def _guarded(cls: type) -> type:
    """``cls`` with a ``forward`` that runs through :func:`run_conv` (made once per class)."""
    if hasattr(cls, "_bf16_plain"):
        return cls
    if cls not in _GUARDED:

        def forward(self, x, *args, **kwargs):
            return run_conv(self, x, lambda v: cls.forward(self, v, *args, **kwargs))

        def __reduce_ex__(self, protocol):  # pickled and deep-copied as the class as built
            _, _, *rest = cls.__reduce_ex__(self, protocol)  # (constructor, its args, state, ...)
            return (copyreg._reconstructor, (cls, object, None), *rest)

        attrs = {
            "forward": forward,
            "__reduce_ex__": __reduce_ex__,
            "_bf16_plain": cls,  # the class as built (plain_type)
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        _GUARDED[cls] = type(cls.__name__, (cls,), attrs)
    return _GUARDED[cls]


def plain_type(module: nn.Module) -> type:
    """``module``'s class as built: the class :func:`guard_bf16` replaced, or ``type(module)``."""
    return getattr(type(module), "_bf16_plain", type(module))


def guard_bf16(model: nn.Module) -> int:
    """Make every convolution module of ``model`` run in fp32 where :func:`bf16_conv_in_fp32` says so.

    Each ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` (subclasses included, but not
    cnnkit's layers whose ``forward`` runs :func:`conv_forward`) gets a subclass of its own class, of the same name, whose ``forward`` checks its input first; the state dict, the
    parameters and ``isinstance`` are unchanged (``torch.nn.utils.parametrize`` swaps classes the
    same way; :func:`plain_type` gives the class as built). A pickled or deep-copied module is of the
    class as built: the guard belongs to the training that set it. Outside CPU bf16 autocast the
    check is a no-op. Calling it again changes nothing.

    Returns:
        how many modules it guarded this call.

    >>> net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
    >>> guard_bf16(net), guard_bf16(net), type(net[0]).__name__, isinstance(net[0], nn.Conv3d)
    (1, 0, 'Conv3d', True)
    """
    count = 0
    for m in model.modules():
        ruled = hasattr(type(m), "_bf16_plain") or getattr(m, "bf16_rule_in_forward", False)
        if isinstance(m, nn.modules.conv._ConvNd) and not ruled:
            m.__class__ = _guarded(type(m))
            count += 1
    return count
