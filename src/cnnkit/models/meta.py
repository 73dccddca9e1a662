"""Networks built for their shapes alone, on PyTorch's meta device (no memory, no random numbers).

On the meta device a tensor has a shape and no values, so initialising its weights computes
nothing. Yet PyTorch runs the first such operation through its Python reference implementations,
which import about 1.3 s of modules (``torch._dynamo``, sympy) on 2 Zen 3 cores: EfficientNet-Lite0
took 1.53 s to build on the meta device, and 0.11 s with the value-only in-place operations
skipped. :func:`on_meta` skips them; everything that sets a shape, a dtype or a flag still runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

# In-place operations that change a tensor's values and nothing else (initialisers and arithmetic)
VALUE_ONLY = frozenset(
    {
        "normal_",
        "uniform_",
        "constant_",
        "kaiming_uniform_",
        "zero_",
        "fill_",
        "random_",
        "bernoulli_",
        "exponential_",
        "log_normal_",
        "geometric_",
        "cauchy_",
        "erfinv_",
        "clamp_",
        "clamp_min_",
        "clamp_max_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "copy_",
    }
)


class _SkipValues(TorchFunctionMode):
    """Returns a meta tensor as it is from the value-only in-place operations of :data:`VALUE_ONLY`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in VALUE_ONLY:
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if first is not None and first.device.type == "meta":
                return first
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Modules built inside are on the meta device, their weights uninitialised: their parameters'
    shapes and sizes, state-dict keys and (run on meta inputs) output shapes are those of the real
    network.

    Example:
        >>> with on_meta():
        ...     layer = torch.nn.Linear(10**6, 10**4)   # 40 GB of weights: nothing allocated
        >>> layer.weight.device.type, tuple(layer.weight.shape)
        ('meta', (10000, 1000000))
    """
    with torch.device("meta"), _SkipValues():
        yield
