"""``cnnkit convert``: a Keras image classifier (``.keras`` / ``.h5``) as a cnnkit classification run."""

from __future__ import annotations

import os
from pathlib import Path


def _per_channel(values: list[float] | None, channels: int, name: str, default: float) -> list[float]:
    """One finite value per channel (one value: every channel); ``std`` values above 0."""
    import math

    from cnnkit.errors import CnnkitError

    values = [default] if values is None else list(values)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise CnnkitError(f"--{name} takes finite numbers (no nan or inf). Received: --{name} {values}")
    if name == "std" and not all(v > 0 for v in values):
        raise CnnkitError(f"--std divides the pixels: each value must be above 0. Received: --std {values}")
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise CnnkitError(f"{name} needs 1 or {channels} values (one per channel). Received: {name}={values}")
    return values


def read_class_names(spec: str | None) -> list[str] | None:
    """Class names given as comma-separated text or a file with one per line, each named once (predict
    and eval name a class by its name); None for none given.

    The names' order is the outputs': a file is read as a YOLO folder's ``classes.txt`` is
    (:func:`cnnkit.data.detection.read_names_file`: UTF-8 whatever the locale, a byte-order mark
    allowed, a blank line before a name refused), and in the text an empty name before the last is
    refused as well. Blank lines or commas at the end name nothing.
    """
    from cnnkit.errors import CnnkitError

    if spec is None:
        return None
    # os.path.isfile is False for a text too long to be a file's name, where Path.is_file raises
    if os.path.isfile(spec):
        from cnnkit.data.detection import read_names_file

        names = read_names_file(Path(spec), "name the class, or remove the line")
    else:
        names = [c.strip() for c in spec.split(",")]
        while names and not names[-1]:
            names.pop()
        empty = next((i for i, c in enumerate(names) if not c), None)
        if empty is not None:
            raise CnnkitError(
                f"--classes {spec}: name {empty + 1} is empty, so output {empty} has no name (the names are the "
                "outputs' in order); name every output"
            )
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise CnnkitError(
            f"--classes names {', '.join(repr(c) for c in twice[:5])} more than once; give each class a "
            f"distinct name. Received: --classes {spec}"
        )
    return names


def _class_names(spec: str | None, n: int) -> list[str]:
    from cnnkit.errors import CnnkitError, counted

    names = read_class_names(spec)
    if names is None:
        return [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise CnnkitError(
            f"--classes {spec} gives {counted(len(names), 'name')} for the model's {counted(n, 'output')}; "
            f"give one name per output, in the outputs' order"
        )
    return names


def check_out(out: str | os.PathLike) -> Path:
    """The checkpoint a command that makes a run writes (``cnnkit convert``, ``cnnkit classify fcn``),
    checked before anything is read or written: a run is never replaced.

    Args:
        out: a run folder (its ``model.safetensors`` is written) or a ``.safetensors`` file.

    Returns:
        The file to write.

    Raises:
        CnnkitError: the folder holds a run (a model or a resume state; the source run itself, say),
            or the ``.safetensors`` file exists.
    """
    from cnnkit.engine.runfolder import MODEL_FILE, RESUME_FILE
    from cnnkit.errors import CnnkitError

    folder = Path(out)
    if folder.suffix == ".safetensors":
        if folder.exists():
            raise CnnkitError(f"{out} already exists; choose another --out (nothing was written)")
        return folder
    if (folder / MODEL_FILE).exists() or (folder / RESUME_FILE).exists():
        raise CnnkitError(f"{out} already holds a run; choose another --out (nothing was written)")
    return folder / MODEL_FILE


def convert_keras(
    model: str | os.PathLike,
    out: str | os.PathLike,
    classes: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    raw_pixels: bool = False,
) -> tuple[Path, dict]:
    """A Keras image classifier (``.keras`` / ``.h5``) as a cnnkit classification run (``cnnkit convert``).

    The Keras file is read as data (no code from it runs) and rebuilt in PyTorch by
    :func:`cnnkit.load_keras`. The network returns logits: a final softmax/sigmoid is dropped. The
    run's Classifier feeds the network ``(x - mean) / std`` of [0, 1] pixels, so ``cnnkit eval``,
    ``predict``, ``explain`` and ``serve`` take the run like any other.

    Args:
        model: the ``.keras`` or ``.h5`` file.
        out: the run folder; ``out/model.safetensors`` is written.
        classes: the class names: comma-separated, or a text file with one per line (default:
            ``class_0``, ``class_1``, ...).
        mean: per-channel mean subtracted from [0, 1] pixels (one value: every channel; default 0).
        std: per-channel divisor (one value: every channel; default 1).
        raw_pixels: the Keras model was trained on 0-255 values: the pixels are multiplied by 255.

    Returns:
        (the path of ``model.safetensors``, the metadata written into it).

    Raises:
        CnnkitError: the file is not a Keras model cnnkit reads, or it is not an image classifier
            (one image input, one (N, classes) output), or ``classes``, ``mean`` or ``std`` do not
            match its outputs and channels.

    Example:
        >>> path, info = convert_keras("mnist.keras", "runs/keras_mnist", classes="0,1,2,3,4,5,6,7,8,9")  # doctest: +SKIP
    """
    import torch

    from cnnkit.engine.runfolder import FORMAT, save_model
    from cnnkit.errors import CnnkitError
    from cnnkit.models.deploy import Classifier
    from cnnkit.models.keras import load_keras

    path = check_out(out)  # a run folder's model.safetensors, or the .safetensors file named
    read_class_names(classes)  # checked before the model is read
    net, size = load_keras(model, logits=True)
    if not (isinstance(size, tuple) and len(size) == 3 and all(isinstance(d, int) for d in size)):
        raise CnnkitError(
            f"{model}: a run folder holds an image classifier with one (C, H, W) input; this model "
            f"takes {size}. Use cnnkit.models.keras.load_keras(path) for it in Python"
        )
    with torch.no_grad():
        out_shape = net(torch.zeros(1, *size)).shape if len(net.outputs) == 1 else None
    if out_shape is None or len(out_shape) != 2:
        raise CnnkitError(
            f"{model}: a run folder holds a classifier with one (N, classes) output; this model "
            f"returns {'several outputs' if out_shape is None else tuple(out_shape)}"
        )
    n = int(out_shape[1])
    names = _class_names(classes, n)
    mean = _per_channel(mean, size[0], "mean", 0.0)
    std = [s / 255 if raw_pixels else s for s in _per_channel(std, size[0], "std", 1.0)]
    clf = Classifier(net, mean, std, names, size)
    info = {
        "format": FORMAT,
        "model": f"keras:{Path(model).name}",
        "num_classes": n,
        "input_size": list(size),
        "classes": names,
        "mean": mean,
        "std": std,
        "tta": "",
        "dataset": {"name": ""},
        "epoch": 0,
        "history": [],
        "interrupted": False,
        "network": {"kind": "keras", "config": net.keras_config, "logits": True},
        "source": {"keras_file": str(Path(model).resolve())},
    }
    save_model(path, clf, info)
    return path, info
