"""``cnnkit convert MODEL.keras --out RUN``: a Keras model file as a cnnkit run folder.

The run's ``model.safetensors`` holds the converted weights and, as its network description, the
Keras model config itself (``{"kind": "keras", "config": ...}``): :func:`cnnkit.load` rebuilds the
network from that JSON with :func:`cnnkit.models.keras.build_from_keras_config`, running no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="a Keras .keras/.h5 model as a cnnkit run (predict, explain, eval, finetune)",
        description="Read a Keras model file (.keras, or legacy .h5 from Keras 2 or 3) without TensorFlow and "
        "without running code from it, rebuild it on PyTorch with Keras' semantics and write a run folder "
        "that `cnnkit predict`, `explain`, `eval`, `finetune` and `export` take. The network returns logits "
        "(a final softmax is left to the loss, as in every cnnkit classifier).")
    p.add_argument("model", metavar="MODEL.keras", help="a file written by Keras' model.save()")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder to write")
    p.add_argument("--classes", help="class names, comma-separated, or a text file with one per line "
                   "(default: class_0, class_1, ...)")
    p.add_argument("--raw-pixels", action="store_true",
                   help="the Keras model was fed raw 0-255 pixels (cnnkit feeds [0, 1]: they are scaled by 255)")
    p.add_argument("--mean", help="per-channel mean subtracted from [0, 1] pixels before the network, comma-separated")
    p.add_argument("--std", help="per-channel std the pixels are divided by, comma-separated")
    p.set_defaults(func=run_convert)


def _floats(text: str | None, name: str) -> list[float] | None:
    from ..errors import CnnkitError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise CnnkitError(f"--{name} takes numbers separated by commas. Received: --{name} {text}") from None


def _per_channel(values: list[float] | None, channels: int, name: str, default: float) -> list[float]:
    from ..errors import CnnkitError

    values = [default] if values is None else list(values)
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise CnnkitError(f"{name} needs 1 or {channels} values (one per channel). Received: {name}={values}")
    return values


def _class_names(spec: str | None, n: int) -> list[str]:
    from ..errors import CnnkitError

    if spec is None:
        return [f"class_{i}" for i in range(n)]
    names = Path(spec).read_text().split("\n") if Path(spec).is_file() else spec.split(",")
    names = [c.strip() for c in names if c.strip()]
    if len(names) != n:
        raise CnnkitError(f"the model has {n} outputs but --classes gives {len(names)} names. "
                          f"Received: --classes {spec}")
    return names


def convert_keras(model: str | os.PathLike, out: str | os.PathLike, classes: str | None = None,
                  mean: list[float] | None = None, std: list[float] | None = None,
                  raw_pixels: bool = False) -> tuple[Path, dict]:
    """Write ``out/model.safetensors`` from a Keras classifier file; returns (its path, its info).

    The network returns logits: a final softmax/sigmoid is dropped (``logits=True``). The run's
    Classifier feeds the network ``(x - mean) / std`` of [0, 1] pixels (default: the pixels as they
    are; ``raw_pixels``: multiplied by 255, for a Keras model trained on 0-255 values).

    Raises:
        CnnkitError: the file is not a Keras model cnnkit reads, or it is not an image classifier
            (one image input, one (N, classes) output).
    """
    import torch

    from ..errors import CnnkitError
    from ..models.keras import load_keras
    from ..train import checkpoint as ckpt

    net, size = load_keras(model, logits=True)
    if not (isinstance(size, tuple) and len(size) == 3 and all(isinstance(d, int) for d in size)):
        raise CnnkitError(f"{model}: a run folder holds an image classifier with one (C, H, W) input; this model "
                          f"takes {size}. Use cnnkit.models.keras.load_keras(path) for it in Python")
    with torch.no_grad():
        out_shape = net(torch.zeros(1, *size)).shape if len(net.outputs) == 1 else None
    if out_shape is None or len(out_shape) != 2:
        raise CnnkitError(f"{model}: a run folder holds a classifier with one (N, classes) output; this model "
                          f"returns {'several outputs' if out_shape is None else tuple(out_shape)}")
    n = int(out_shape[1])
    names = _class_names(classes, n)
    mean = _per_channel(mean, size[0], "mean", 0.0)
    std = [s / 255 if raw_pixels else s for s in _per_channel(std, size[0], "std", 1.0)]
    clf = ckpt.Classifier(net, mean, std, names, size)
    info = {"format": ckpt.FORMAT, "model": f"keras:{Path(model).name}", "num_classes": n,
            "input_size": list(size), "classes": names, "mean": mean, "std": std, "tta": "",
            "dataset": {"name": ""}, "epoch": 0, "history": [], "interrupted": False,
            "network": {"kind": "keras", "config": net.keras_config, "logits": True},
            "source": {"keras_file": str(Path(model).resolve())}}
    path = Path(out) / ckpt.MODEL_FILE
    ckpt.save_model(path, clf, info)
    return path, info


def run_convert(args) -> int:
    path, info = convert_keras(args.model, args.out, args.classes, _floats(args.mean, "mean"),
                               _floats(args.std, "std"), args.raw_pixels)
    print(f"wrote {path}: {info['model']} -> {info['num_classes']} classes, input "
          f"{'x'.join(map(str, info['input_size']))}; mean {json.dumps(info['mean'])}, std {json.dumps(info['std'])}")
    return 0
