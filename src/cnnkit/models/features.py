"""Any zoo backbone as a pyramid of feature maps: the maps at output strides 2/4/8/16/32 and their channels.

The idea of timm's ``features_only`` / ``feature_info``: detection and segmentation heads take the
intermediate maps of a classification network. Each supported family names its *trunk*, the modules
its ``forward_features`` runs one after the other (``nn.Sequential`` containers counted by their
children); the map of stride ``s`` is the output of the last trunk module whose output has stride
``s``, found once by a probe forward at 64x64. ``output_stride=16`` or ``8`` replaces the later
strides by dilation (atrous convolution, as torchvision's ``replace_stride_with_dilation``): the
state dict is unchanged, so ImageNet weights still load.

On VGG, ``fc_convs=True`` turns the classifier's fc6 and fc7 into convolutions (a 7x7 and a 1x1 conv to
4096, each with its ReLU and dropout, Long et al.'s conv6 and conv7) once the weights have loaded, so
ImageNet's fc6 and fc7 weights carry over; they join the trunk at stride 32. ``taps="pool"`` returns
each map finer than the coarsest at the *first* trunk module of its stride (on VGG the max pool that
enters it: pool3 and pool4, FCN's skips) instead of the last.

The modules after the last returned map (the classifier; VGG's fc6 and fc7 without ``fc_convs``, MobileNet's and
EfficientNet's 1x1 head conv; stages beyond the coarsest stride asked for) are never run: they are
removed once the weights have loaded into the whole zoo model, so they are no parameters, are not
saved and are not counted, and every kept weight keeps the zoo model's state-dict name.
:func:`dropped_keys` names what a checkpoint saved with them holds in addition.

>>> fx = create_features("resnet18", out_strides=(8, 16, 32))
>>> fx.strides, fx.channels
([8, 16, 32], [128, 256, 512])
>>> [tuple(m.shape) for m in fx(torch.zeros(1, 3, 64, 64))]
[(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError
from cnnkit.layers.conv_same import resolve_padding
from cnnkit.models._registry import create_model

STRIDES = (2, 4, 8, 16, 32)
_PROBE = 64  # side of the probe input that finds each trunk module's stride


def _trunk_names(model: nn.Module) -> list[str] | None:
    """The dotted names of the modules ``forward_features`` runs in order, or None when unsupported."""
    from cnnkit.models.densenet import DenseNet
    from cnnkit.models.efficientnet import EfficientNet, EfficientNetLite
    from cnnkit.models.mobilenet_v1 import MobileNetV1
    from cnnkit.models.mobilenet_v2 import MobileNetV2
    from cnnkit.models.mobilenet_v3 import MobileNetV3
    from cnnkit.models.resnet import ResNet
    from cnnkit.models.vgg import VGG

    def children(prefix: str, drop_last: int = 0) -> list[str]:
        names = [f"{prefix}.{n}" for n, _ in model.get_submodule(prefix).named_children()]
        return names[: len(names) - drop_last]

    if isinstance(model, ResNet):  # (also SE-ResNet) stem, maxpool, four stages
        return ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    if isinstance(model, (VGG, DenseNet)):
        return children("features")
    if isinstance(model, (MobileNetV1, EfficientNetLite)):
        return ["conv_stem", "bn1", "act1", *children("blocks")]
    if isinstance(model, (MobileNetV2, MobileNetV3, EfficientNet)):
        return children("features", drop_last=1)  # the blocks; not the 1x1 head conv (as timm)
    return None


class FeatureExtractor(nn.Module):
    """A zoo backbone that returns its maps at the requested strides (see :func:`create_features`).

    Attributes:
        backbone: the wrapped zoo model without the modules that are never run, the state-dict names
            of the others unchanged.
        dropped_keys: the state-dict keys (under ``backbone.``) of the removed modules, as the whole
            model held them with its classifier reset to nothing (see :func:`dropped_keys`).
        strides: effective stride of each returned map (capped by ``output_stride``).
        channels: channels of each returned map.
        feature_info: ``[{"stride": s, "channels": c, "module": dotted name in backbone}, ...]``.

    Input shape: (B, C, H, W). Output: a list, map ``i`` of shape
    (B, channels[i], ceil(H / strides[i]), ceil(W / strides[i])).
    """

    def __init__(
        self,
        backbone: nn.Module,
        trunk: list[str],
        taps: list[int],
        strides: list[int],
        channels: list[int],
        dropped_keys: tuple[str, ...] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self._trunk = trunk[: max(taps) + 1]  # later modules are never run
        self.dropped_keys = tuple(dropped_keys)
        self._taps = taps  # index into the trunk of each returned map
        self.strides = strides
        self.channels = channels
        self.feature_info = [
            {"stride": s, "channels": c, "module": trunk[t]} for s, c, t in zip(strides, channels, taps)
        ]

    def stem(self, stride: int) -> list[nn.Module]:
        """The trunk modules that compute the returned map at ``stride`` and everything before it."""
        if stride not in self.strides:
            raise CnnkitError(f"no returned map at stride {stride}; the maps' strides: {self.strides}")
        return self.up_to_stride(stride)

    def up_to_stride(self, stride: int) -> list[nn.Module]:
        """The leading trunk modules whose output stride is at most ``stride`` (found by a 64x64 probe):
        what fine-tuning freezes so that no gradient flows through the high-resolution layers."""
        if stride < 2:
            return []
        strides, _ = _probe(self.backbone, self._trunk)
        return [self.backbone.get_submodule(n) for n, s in zip(self._trunk, strides) if s <= stride]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps, wanted = [], set(self._taps)
        for i, name in enumerate(self._trunk):
            x = self.backbone.get_submodule(name)(x)
            if i in wanted:
                maps.append(x)
        return maps


def create_features(
    name: str,
    weights: str | None = None,
    out_strides=(4, 8, 16, 32),
    output_stride: int = 32,
    in_channels: int | None = None,
    taps: str = "last",
    fc_convs: bool = False,
) -> FeatureExtractor:
    """Build zoo model ``name`` (optionally with ``weights``) and return its maps at ``out_strides``.

    Args:
        name: a zoo name (ResNets, ResNeXt, Wide ResNet, SE-ResNet, VGG, DenseNet, MobileNet v1/v2/v3,
            EfficientNet-Lite and -B).
        weights: None, ``"imagenet"`` or a path/URL, as :func:`cnnkit.create_model` takes them.
        out_strides: an increasing subset of (2, 4, 8, 16, 32).
        output_stride: 32, 16 or 8; below 32 the later stages are dilated instead of strided.
        in_channels: image channels (the model's default when None).
        taps: which trunk module gives each map: ``"last"``, the last module at its stride (on VGG16
            relu4_3, relu5_3, pool5); ``"pool"``, for every map but the coarsest the first module at its
            stride (on VGG16 pool3 and pool4, the maps FCN's skips score), the coarsest still the last.
        fc_convs: VGG only: fc6 and fc7 as a 7x7 conv ("same" padding, 3 px) and a 1x1 conv to 4096,
            each followed by its ReLU and dropout, converted by :func:`cnnkit.models.fcn._linear_to_conv`
            after the weights load (``weights`` give their fc6 and fc7); they end the trunk at stride 32,
            so the stride-32 map is conv7's (4096 channels). Needs 32 in ``out_strides``.
    Raises:
        CnnkitError: an unsupported model, bad strides, an ``output_stride`` the model cannot
            reach by dilation (its later stages pool), an unknown ``taps``, or ``fc_convs`` on a
            model other than VGG or without the stride-32 map.
    """
    strides = tuple(out_strides)
    if not strides or any(s not in STRIDES for s in strides) or list(strides) != sorted(set(strides)):
        raise CnnkitError(
            f"out_strides must be an increasing subset of {STRIDES}; received: out_strides={out_strides!r}"
        )
    if output_stride not in (8, 16, 32):
        raise CnnkitError(f"output_stride must be 8, 16 or 32; received: output_stride={output_stride!r}")
    if taps not in ("last", "pool"):
        raise CnnkitError(f"taps must be 'last' or 'pool'; received: taps={taps!r}")
    if fc_convs not in (False, True):
        raise CnnkitError(f"fc_convs must be True or False; received: fc_convs={fc_convs!r}")
    if fc_convs and strides[-1] != 32:
        raise CnnkitError(
            f"fc_convs puts fc6 and fc7 at stride 32, which out_strides={out_strides!r} does not return: add 32"
        )
    model = create_model(name, in_channels=in_channels, weights=weights)
    trunk = _trunk_names(model)
    if trunk is None:
        families = "resnet*, resnext*, wide_resnet*, seresnet50, vgg*, densenet*, mobilenet_v1/v2/v3*, efficientnet_*"
        raise CnnkitError(f"model {name!r} has no feature pyramid in cnnkit; models that have: {families}")
    model.reset_classifier(0)  # no classifier weights: dropped_keys lists what runs saved with it
    if fc_convs:
        trunk = trunk + _convolve_fc(model, name)  # after the weights: ImageNet's fc6 and fc7 carry over
    trunk_strides, trunk_channels = _trunk_shapes(model, name, trunk, fc_convs)
    rule, taps = taps, []
    for k, s in enumerate(strides):
        at = [i for i, t in enumerate(trunk_strides) if t == s]
        if not at:
            raise CnnkitError(
                f"model {name!r} has no feature map at stride {s}; its strides: {sorted(set(trunk_strides))}"
            )
        taps.append(at[0] if rule == "pool" and k < len(strides) - 1 else at[-1])
    if output_stride < 32:
        first = trunk_strides.index(output_stride * 2) if output_stride * 2 in trunk_strides else len(trunk)
        _dilate(model, trunk[first : max(taps) + 1], name, output_stride)
    dropped = _drop_unrun(model, trunk[: max(taps) + 1])  # after the weights and the random draws
    return FeatureExtractor(
        model, trunk, taps, [min(s, output_stride) for s in strides], [trunk_channels[t] for t in taps], dropped
    )


def _convolve_fc(model: nn.Module, name: str) -> list[str]:
    """Replace VGG's fc6 and fc7 (``classifier.0``, ``classifier.3``) by the convolutions they are on a
    7x7 map, fc6 padded "same" (3 px) so that any map of at least 1x1 gives a map of its own size; return
    the dotted names of fc6 to drop7, the modules that join the trunk. The state-dict names stay."""
    from cnnkit.models.fcn import _linear_to_conv
    from cnnkit.models.vgg import VGG

    if not isinstance(model, VGG):
        raise CnnkitError(
            f"fc_convs turns VGG's fc6 and fc7 into convolutions; model {name!r} is not a VGG: give vgg11, vgg13, "
            "vgg16 or vgg19 (or a _bn variant)"
        )
    head = model.classifier
    fc6 = _linear_to_conv(head[0], (7, 7), "classifier.0")  # (B, 512, h, w) -> (B, 4096, h - 6, w - 6)
    fc6.padding = (3, 3)  # -> (B, 4096, h, w): at a 7x7 map the middle cell is fc6 of the whole map
    head[0], head[3] = fc6, _linear_to_conv(head[3], (1, 1), "classifier.3")  # fc7: (B, 4096, h, w)
    return [f"classifier.{i}" for i in range(6)]  # fc6, relu6, drop6, fc7, relu7, drop7


def _drop_unrun(model: nn.Module, run: list[str]) -> tuple[str, ...]:
    """Remove from ``model`` every module that is neither one of the dotted names ``run`` nor holds one;
    return the state-dict keys the removed modules held."""
    before = list(model.state_dict())

    def visit(module: nn.Module, prefix: str) -> None:
        for child, sub in list(module.named_children()):
            name = prefix + child
            if name in run:
                continue
            if any(r.startswith(name + ".") for r in run):
                visit(sub, name + ".")
            else:
                delattr(module, child)

    visit(model, "")
    kept = set(model.state_dict())
    return tuple(k for k in before if k not in kept)


def dropped_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model`` that its :class:`FeatureExtractor` modules removed as never run
    (e.g. ``encoder.backbone.classifier.0.weight`` of an FCN on VGG16). A checkpoint saved while the
    backbone kept them holds them in addition to ``model``'s own: loading ignores exactly these."""
    return {
        f"{name}.{key}" if name else key
        for name, m in model.named_modules()
        if isinstance(m, FeatureExtractor)
        for key in (f"backbone.{k}" for k in m.dropped_keys)
    }


REAL_PROBE_BYTES = 1 << 28  # a meta model's parameters up to 256 MB: probed through a real copy


def _trunk_shapes(model: nn.Module, name: str, trunk: list[str], fc_convs: bool = False) -> tuple[list[int], list[int]]:
    """:func:`_probe`'s strides and channels. A model on the meta device (a shapes-only build) is
    probed through a real copy of ``name`` when its parameters take at most
    :data:`REAL_PROBE_BYTES`: PyTorch's first operation on meta tensors imports about 1.3 s of its
    own modules (2 Zen 3 cores), and a real copy takes a tenth of that."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if first.weight.device.type != "meta":
        return _probe(model, trunk)
    if sum(p.numel() * p.element_size() for p in model.parameters()) > REAL_PROBE_BYTES:
        return _probe(model, trunk)
    strides, channels = _real_probe(name, first.in_channels, fc_convs)
    return list(strides), list(channels)


@functools.cache
def _real_probe(name: str, in_channels: int, fc_convs: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The trunk's strides and channels from a real copy of zoo model ``name`` (with ``fc_convs``, its
    fc6 and fc7 as convolutions), built without weights on the CPU; the random numbers its
    initialisation draws are given back."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        real = create_model(name, in_channels=in_channels)
        real.reset_classifier(0)
        trunk = _trunk_names(real) + (_convolve_fc(real, name) if fc_convs else [])
    strides, channels = _probe(real, trunk)
    return tuple(strides), tuple(channels)


@torch.no_grad()
def _probe(model: nn.Module, trunk: list[str]) -> tuple[list[int], list[int]]:
    """Stride and channels of each trunk module's output, from one forward of a 64x64 input in eval mode."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    p = first.weight
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        x = torch.zeros(1, first.in_channels, _PROBE, _PROBE, device=p.device, dtype=p.dtype)
        strides, channels = [], []
        for name in trunk:
            x = model.get_submodule(name)(x)
            strides.append(2 ** round(math.log2(_PROBE / x.shape[-1])))
            channels.append(x.shape[1])
    finally:
        for m, mode in modes.items():
            m.training = mode
    return strides, channels


def _dilate(model: nn.Module, names: list[str], name: str, output_stride: int) -> None:
    """Turn every stride in modules ``names`` into dilation (torchvision's ResNet rule, any conv net).

    In registration order: a strided k x k conv keeps the current dilation and stride 1, and the convs
    after it dilate by its stride; a strided 1x1 (a shortcut) just loses its stride. A strided pool
    cannot be dilated: CnnkitError.
    """
    dilation = 1
    for top in names:
        for sub in model.get_submodule(top).modules():
            if isinstance(sub, (nn.MaxPool2d, nn.AvgPool2d)) and sub.stride not in (1, (1, 1)):
                raise CnnkitError(
                    f"model {name!r} pools in its later stages and cannot dilate to output stride "
                    f"{output_stride}: give a ResNet, MobileNet or EfficientNet backbone, or an architecture "
                    "that runs at output stride 32 (FCN, U-Net)"
                )
            if not isinstance(sub, nn.Conv2d):
                continue
            stride, kernel = sub.stride[0], sub.kernel_size[0]
            if stride > 1 and kernel == 1:
                sub.stride = (1, 1)
            elif stride > 1:
                _set_dilation(sub, dilation, name)
                dilation *= stride
            elif kernel > 1:
                _set_dilation(sub, dilation, name)


def _set_dilation(conv: nn.Conv2d, dilation: int, name: str) -> None:
    """Stride 1 and ``dilation``, with the "same" padding recomputed (plain or TF-style convolution)."""
    k, old = conv.kernel_size, conv.dilation
    if hasattr(conv, "pad_mode"):  # Conv2dSame: TF "same", fixed once the stride is 1
        conv.stride, conv.dilation = (1, 1), (dilation, dilation)
        conv.padding, conv.pad_mode = resolve_padding("same", k, 1, dilation, 2)
        return
    if tuple(conv.padding) != tuple((kk - 1) * d // 2 for kk, d in zip(k, old)):
        raise CnnkitError(
            f"model {name!r} has a convolution without 'same' padding in its later stages and cannot "
            "dilate: give a ResNet, MobileNet or EfficientNet backbone, or an architecture that runs at "
            "output stride 32 (FCN, U-Net)"
        )
    conv.stride, conv.dilation = (1, 1), (dilation, dilation)
    conv.padding = tuple((kk - 1) * dilation // 2 for kk in k)
