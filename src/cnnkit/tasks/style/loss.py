"""The perceptual loss of style transfer: a frozen loss network's features, Gram matrices, total variation.

Gatys, Ecker & Bethge 2016 ("Image Style Transfer Using Convolutional Neural Networks"): content is
a layer's features, style the Gram matrices of several layers. Wang et al. 2021 ("Rethinking and
Improving the Robustness of Image Style Transfer", CVPR, https://arxiv.org/abs/2104.05623): the
features of networks other than VGG have a few large, peaky activations whose Gram matrices carry
little style; a softmax over each channel's positions before the Gram matrix (:func:`robust_gram`)
smooths them and makes such networks transfer style.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from cnnkit.errors import CnnkitError


def gram(f: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of features per image, over positions: G = F F^T / (H W).

    Args:
        f: features (B, C, H, W).

    Returns:
        (B, C, C): channel i against channel j, averaged over the positions.
    """
    b, c, h, w = f.shape
    x = f.reshape(b, c, h * w)
    return x @ x.transpose(1, 2) / (h * w)


def robust_gram(f: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s smoothed Gram matrix: :func:`gram` of each channel's softmax over its positions,
    times the number of positions (so a flat channel is 1 everywhere, at any image size).

    Args:
        f: features (B, C, H, W).

    Returns:
        (B, C, C), computed in float32.
    """
    b, c, h, w = f.shape
    s = torch.softmax(f.reshape(b, c, h * w).float(), dim=-1) * (h * w)  # (B, C, HW), mean 1 per channel
    return s @ s.transpose(1, 2) / (h * w)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, vertical plus horizontal.

    Args:
        x: images (B, C, H, W).

    Returns:
        A scalar tensor: 0 for a flat image.
    """
    return (x[..., 1:, :] - x[..., :-1, :]).square().mean() + (x[..., :, 1:] - x[..., :, :-1]).square().mean()


def _relative(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||x - target||^2 / ||target||^2 per image, averaged over the batch: a loss of the same scale at every layer."""
    dims = tuple(range(1, x.dim()))
    return ((x - target).square().sum(dims) / target.square().sum(dims).clamp_min(1e-12)).mean()


def vgg_layer_names(features: nn.Sequential) -> list[str]:
    """Gatys et al.'s names of a VGG trunk's layers: ``conv1_1``, ``relu1_1``, ..., ``pool1``, ``conv2_1``, ..."""
    names, block, index = [], 1, 1
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            names.append(f"conv{block}_{index}")
        elif isinstance(layer, nn.ReLU):
            names.append(f"relu{block}_{index}")
            index += 1
        elif isinstance(layer, nn.BatchNorm2d):
            names.append(f"bn{block}_{index}")
        else:
            names.append(f"pool{block}")
            block, index = block + 1, 1
    return names


class LossNetwork(nn.Module):
    """A frozen image network as named stages; ``forward`` returns the tapped stages' outputs.

    Args:
        stages: (name, module) in order; each module takes the previous one's output.
        mean: per-channel mean of the network's input normalisation (pixels on [0, 1]).
        std: per-channel standard deviation of that normalisation.

    Raises:
        CnnkitError: a tapped layer name the network does not have.
    """

    def __init__(self, stages: list[tuple[str, nn.Module]], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.names = [n for n, _ in stages]
        self.stages = nn.ModuleList([m for _, m in stages])
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def check(self, layers: Sequence[str], flag: str) -> None:
        """Every name of ``layers`` is one of the network's layers (``flag`` names the option)."""
        unknown = [n for n in layers if n not in self.names]
        if not layers:
            raise CnnkitError(
                f"{flag}: no layer given; name at least one of the loss network's: {', '.join(self.names)}"
            )
        if unknown:
            raise CnnkitError(
                f"{flag}: {unknown[0] if unknown else 'no layer'} is not a layer of the loss network; "
                f"its layers: {', '.join(self.names)}"
            )

    def forward(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) on [0, 1] -> {name: features} of the ``taps``, running no stage past the deepest."""
        last = max(self.names.index(t) for t in taps)
        x = (x - self.mean) / self.std
        out = {}
        for name, stage in zip(self.names[: last + 1], self.stages):
            x = stage(x)
            if name in taps:
                out[name] = x
        return out


def loss_network(network: str, weights: str | None) -> LossNetwork:
    """The frozen loss network: EfficientNet-Lite0 (stem, blocks.0-6, head) or VGG19 (Gatys et al.'s layer names).

    Args:
        network: ``efficientnet_lite0`` | ``vgg19``.
        weights: ``imagenet`` (EfficientNet-Lite0's published weights), a state-dict file
            (VGG19: torchvision's, every key and shape checked), or None (random: tests only).

    Returns:
        The :class:`LossNetwork` in eval mode, its parameters frozen.

    Raises:
        CnnkitError: an unknown network, or weights that cannot be read or do not fit.
    """
    from cnnkit.models import create_model
    from cnnkit.models.weights import PRETRAINED

    if network == "efficientnet_lite0":
        net = create_model(network, weights=weights)
        stem = nn.Sequential(net.conv_stem, net.bn1, net.act1)
        stages = [("stem", stem)] + [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
        stages.append(("head", nn.Sequential(net.conv_head, net.bn2, net.act2)))
        pre = PRETRAINED[network]
        return LossNetwork(stages, pre.mean, pre.std)
    if network == "vgg19":
        if weights == "imagenet":
            raise CnnkitError(
                "--network vgg19 needs --weights PATH: torchvision's vgg19 state dict (vgg19-dcbb9e9d.pth), "
                "which cnnkit does not download here. Received: --weights imagenet"
            )
        features = _vgg19_features(weights)
        for layer in features:
            if isinstance(layer, nn.ReLU):
                layer.inplace = False  # a tapped conv output must stay as it was
        pre = PRETRAINED[network]
        return LossNetwork(list(zip(vgg_layer_names(features), features)), pre.mean, pre.std)
    raise CnnkitError(f"--network is efficientnet_lite0 or vgg19. Received: --network {network}")


def _vgg19_features(weights: str | None) -> nn.Sequential:
    """VGG19's convolutional trunk, with the weights of a torchvision ``vgg19`` state-dict file whose
    every key and shape is checked (the classifier's too, which the loss does not keep)."""
    from cnnkit.models import create_model
    from cnnkit.models.meta import on_meta
    from cnnkit.models.vgg import CFGS, make_layers
    from cnnkit.models.weights import read_state_dict

    features = make_layers(CFGS["vgg19"])
    if weights is None:
        return features
    with on_meta():  # the shapes alone: no memory, no initialisation
        expected = {k: tuple(v.shape) for k, v in create_model("vgg19").state_dict().items()}
    state = read_state_dict(weights)
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        shapes = [
            f"{k} {found[k]} (expected {expected[k]})" for k in found if k in expected and found[k] != expected[k]
        ]
        raise CnnkitError(
            f"{weights} is not torchvision's vgg19 state dict (missing: {', '.join(missing[:3]) or 'none'}; "
            f"unexpected: {', '.join(unexpected[:3]) or 'none'}; other shapes: {', '.join(shapes[:3]) or 'none'}); "
            "give vgg19-dcbb9e9d.pth"
        )
    features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
    return features


class PerceptualLoss(nn.Module):
    """Content + style + total variation loss of images against one style image's Gram matrices.

    Args:
        net: the frozen :class:`LossNetwork`.
        style: (1, 3, H, W) on [0, 1]: the style image.
        style_layers: layers whose Gram matrices are matched.
        content_layers: layers whose features are matched.
        robust_layers: the style layers whose Gram matrix is :func:`robust_gram` (the others: :func:`gram`).
        content_weight: the weight of the content term.
        style_weight: the weight of the style term.
        tv_weight: the weight of the total variation term.

    Raises:
        CnnkitError: a layer the network does not have, or a robust layer that is no style layer.
    """

    def __init__(
        self,
        net: LossNetwork,
        style: torch.Tensor,
        style_layers: Sequence[str],
        content_layers: Sequence[str],
        robust_layers: Sequence[str] = (),
        content_weight: float = 1.0,
        style_weight: float = 10.0,
        tv_weight: float = 0.0,
    ):
        super().__init__()
        net.check(style_layers, "--style-layers")
        net.check(content_layers, "--content-layers")
        extra = [n for n in robust_layers if n not in style_layers]
        if extra:
            raise CnnkitError(f"--robust-layers: {extra[0]} is not one of the style layers ({', '.join(style_layers)})")
        self.net = net
        self.style_layers, self.content_layers = list(style_layers), list(content_layers)
        self.grams = [robust_gram if n in robust_layers else gram for n in self.style_layers]
        self.weights = (content_weight, style_weight, tv_weight)
        with torch.no_grad():
            feats = net(style, self.style_layers)
            for i, name in enumerate(self.style_layers):  # (1, C, C) targets, buffers: they follow .to()
                self.register_buffer(f"target{i}", self.grams[i](feats[name]))

    def content_targets(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The content layers' features of (B, 3, H, W) photos, without gradients."""
        with torch.no_grad():
            return self.net(content, self.content_layers)

    def forward(
        self, x: torch.Tensor, content: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, {"content", "style", "tv"} unweighted) of images ``x`` (B, 3, H, W) on [0, 1]."""
        feats = self.net(x, self.style_layers + self.content_layers)
        style = sum(
            _relative(self.grams[i](feats[n]), getattr(self, f"target{i}").expand(x.shape[0], -1, -1))
            for i, n in enumerate(self.style_layers)
        ) / len(self.style_layers)
        content_loss = sum(_relative(feats[n], content[n]) for n in self.content_layers) / len(self.content_layers)
        tv = total_variation(x)
        wc, ws, wt = self.weights
        parts = {"content": content_loss, "style": style, "tv": tv}
        return wc * content_loss + ws * style + wt * tv, parts  # type: ignore[return-value]
