"""What ``cnnkit explain`` explains: a classification run, or a zoo model with its published weights."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from cnnkit.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cnnkit.data.images import read_image
from cnnkit.errors import CnnkitError
from cnnkit.explain.target import Explainable, Normalised


def load_explainable(
    source: str, weights: str | None = None, imagenet_norm: bool = False, factory: str | None = None
) -> Explainable:
    """A run folder / ``.safetensors`` checkpoint (via :func:`cnnkit.load`) or a zoo model name.

    Checkpoints are explained without test-time augmentation (one forward per image), through their
    own input normalisation; layer names are those of the bare network (``model.net``). ``factory``
    (``FILE.py:FN``) is for a checkpoint whose network only code builds (``cnnkit.load``'s trust_code).
    """
    path = Path(source)
    if path.exists():
        if weights:
            raise CnnkitError(f"--weights is for zoo models; {source} is a checkpoint that has its own")
        from cnnkit.tasks.classify.load import load_classifier

        model = load_classifier(path, trust_code=factory is not None, factory=factory)
        if hasattr(model, "tta"):
            model.tta = ""
        info = getattr(model, "info", {}) or {}
        dark = bool(info.get("dataset", {}).get("dark_background", False))
        return Explainable(model, "net.", list(model.classes), tuple(model.input_size), dark)
    from cnnkit.models import create_model, list_models, model_info

    if source not in list_models():
        model_info(source)  # raises "unknown model name ..., did you mean ..."
    from cnnkit.models.weights import PRETRAINED, imagenet_classes

    info = model_info(source)
    if info.input_size is None or len(info.input_size) != 3:
        raise CnnkitError(
            f"{source} takes inputs of shape {tuple(info.input_size or ())}, not images (C, H, W); "
            "explanations are of image classifiers: pick a 2-D network of `cnnkit zoo` (a series model "
            "is explained from its trained run: `cnnkit explain RUN SERIES_FILE`)"
        )
    net = create_model(source, weights=weights).eval()
    published = PRETRAINED.get(source)
    imagenet_norm = imagenet_norm or (weights == "imagenet" and published is not None)
    norm = (published.mean, published.std) if published is not None else (IMAGENET_MEAN, IMAGENET_STD)
    model, prefix = (Normalised(net, *norm).eval(), "net.") if imagenet_norm else (net, "")
    num_classes = getattr(net, "num_classes", None)
    if num_classes is None:
        last = [m for m in net.modules() if isinstance(m, nn.Linear)]
        num_classes = last[-1].out_features if last else 0
    classes = (
        imagenet_classes() if weights == "imagenet" and num_classes == 1000 else [str(k) for k in range(num_classes)]
    )
    return Explainable(model, prefix, classes, tuple(info.input_size), random_weights=not weights)


def read_input(target: Explainable, source, resize: bool = True):
    """The image file (a path or a file object) as the model is explained on it: as `cnnkit predict`
    reads it, so the explained class is the one predict answers. A run trained on an image folder
    decodes it as training did (:func:`~cnnkit.tasks.classify.predict.run_loader`: the shorter side,
    the centre, the run's interpolation); any other model takes it at its own size, or resized to the
    model's input with ``resize``.

    Returns:
        A float (C, H, W) tensor in [0, 1] with the model's channels.
    """
    from cnnkit.tasks.classify.predict import run_loader

    loader = run_loader(target.model) if hasattr(target, "model") else None
    if loader is not None:
        return loader(source)
    c, h, w = target.input_size
    return read_image(source, c, (h, w) if resize else None, target.dark_background)
