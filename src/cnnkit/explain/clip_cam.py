"""Grad-CAM over a clip: where *and when* the evidence for a class lies.

Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) with the gradients averaged over
time as well as space. For the class score ``y_c`` and the activations ``A`` (K, t, h, w) of a 3-D
convolutional layer::

    alpha_k = mean_{t,i,j} d y_c / d A_k[t, i, j]      # (K,) channel weights
    cam     = ReLU( sum_k alpha_k * A_k )              # (t, h, w)

then ``cam`` is upsampled (trilinear) to the clip's frames and pixels and divided by its maximum. A
model that sees only a clip's first frames (a :class:`~cnnkit.tasks.video.VideoClassifier` keeps
the first ``(frames - 1) stride + 1``) has its map spread over those; the frames after them are 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.explain.base import model_device, normalise_max, selected_score, target_classes
from cnnkit.explain.hooks import frozen, recording, torchscript_where
from cnnkit.models.scripted import hook_points, is_torchscript


def last_conv3d_block(model: nn.Module) -> str:
    """The name of the module holding the last ``nn.Conv3d`` (its block: conv, norm and ReLU).

    Only convolutions outside TorchScript count (:func:`~cnnkit.models.scripted.hook_points`): one
    inside runs from compiled code, without the hooks that record its activations and gradients.

    Raises:
        CnnkitError: the model has no 3-D convolution, or has them only inside TorchScript (the message
            says so, and what works instead).
    """
    names = [name for name, m, _ in hook_points(model) if isinstance(m, nn.Conv3d)]
    if not names:
        hidden = any(is_torchscript(m) and getattr(m, "original_name", None) == "Conv3d" for m in model.modules())
        if hidden:
            raise CnnkitError(
                f"Grad-CAM over a clip needs a 3-D convolution whose hooks run, and those of {type(model).__name__} "
                f"run inside TorchScript ({torchscript_where(model)}), whose compiled forward calls them without "
                "hooks; give a network of plain nn modules (cnnkit.load(RUN) rebuilds one), or layer= a TorchScript "
                "module whose output is (N, K, t, h, w)"
            )
        raise CnnkitError(f"Grad-CAM over a clip needs a network of 3-D convolutions; {type(model).__name__} has none")
    return names[-1].rpartition(".")[0] or names[-1]


def clip_grad_cam(
    model: nn.Module, clip: torch.Tensor, target_class: int | None = None, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Grad-CAM of ``target_class`` (default: the top class) over a clip, in time and space.

    Args:
        model: a clip classifier, clips (N, T, C, H, W) -> scores (N, K); run in eval mode.
        clip: one clip (T, C, H, W) or a batch (N, T, C, H, W), as the model takes it.
        target_class: the class to explain; None explains each clip's top class.
        layer: the layer whose activations (N, K, t, h, w) are weighted; default the block of the
            last 3-D convolution (:func:`last_conv3d_block`).

    Returns:
        ``(cam, classes)``: cam (T, H, W) in [0, 1] for one clip, (N, T, H, W) for a batch, at the
        clip's frames and pixels (0 on frames the model does not see); classes () or (N,) int64. On CPU.

    Raises:
        CnnkitError: a clip of the wrong rank, a layer whose output is not 5-D, a model without
            3-D convolutions, a class out of range.

    Example:
        ``runs/video`` is a ``cnnkit video train`` run:

        >>> import cnnkit
        >>> model = cnnkit.load("runs/video")                        # doctest: +SKIP
        >>> cam, cls = clip_grad_cam(model, torch.rand(20, 1, 64, 64))  # doctest: +SKIP
        >>> cam.shape, cls.shape                                     # doctest: +SKIP
        (torch.Size([20, 64, 64]), torch.Size([]))
    """
    if not isinstance(clip, torch.Tensor) or clip.dim() not in (4, 5):
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise CnnkitError(f"a clip is a tensor (T, C, H, W) or (N, T, C, H, W); received: {shape}")
    single = clip.dim() == 4
    x = (clip[None] if single else clip).float().to(model_device(model))
    layer = layer or last_conv3d_block(model)
    x.requires_grad_(True)
    with frozen(model), recording(model, [layer], grads=True) as rec, torch.enable_grad():
        scores = model(x)  # (N, K)
        classes = target_classes(scores, target_class)
        selected_score(scores, classes).backward()
    acts = rec["activations"][layer].detach()  # (N, K, t, h, w)
    if acts.dim() != 5:
        raise CnnkitError(
            f"layer {layer!r} gives shape {tuple(acts.shape)}; Grad-CAM over a clip needs (N, K, t, h, w)"
        )
    grads = rec["gradients"][layer]
    alpha = grads.mean(dim=(2, 3, 4), keepdim=True)  # (N, K, 1, 1, 1)
    cam = F.relu((alpha * acts).sum(1, keepdim=True))  # (N, 1, t, h, w)
    t, h, w = x.shape[1], x.shape[3], x.shape[4]
    seen = t  # the frames the model reads: a VideoClassifier keeps every stride-th of its first ones
    if isinstance(getattr(model, "frames", None), int) and isinstance(getattr(model, "stride", None), int):
        seen = min(t, (model.frames - 1) * model.stride + 1)
    cam = F.interpolate(cam, size=(seen, h, w), mode="trilinear", align_corners=False)[:, 0]  # (N, seen, H, W)
    cam = F.pad(cam, (0, 0, 0, 0, 0, t - seen))  # (N, T, H, W): nothing on the frames it never sees
    cam = normalise_max(cam.flatten(1, 2)).view(-1, t, h, w).cpu()
    classes = classes.cpu()
    return (cam[0], classes[0]) if single else (cam, classes)
