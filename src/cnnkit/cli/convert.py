"""``cnnkit convert MODEL.keras --out RUN``: a Keras model file as a cnnkit run folder.

The run's ``model.safetensors`` holds the converted weights and, as its network description, the
Keras model config itself (``{"kind": "keras", "config": ...}``): :func:`cnnkit.load` rebuilds the
network from that JSON with :func:`cnnkit.models.keras.build_from_keras_config`, running no code.
"""

from __future__ import annotations

import json

from cnnkit.tasks.classify.convert import convert_keras


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="a Keras .keras/.h5 model as a cnnkit run (predict, explain, eval, finetune)",
        description="Read a Keras model file (.keras, or legacy .h5 from Keras 2 or 3) without TensorFlow and "
        "without running code from it, rebuild it on PyTorch with Keras' semantics and write a run folder "
        "that `cnnkit predict`, `explain`, `eval`, `finetune` and `export` take. The network returns logits "
        "(a final softmax is left to the loss, as in every cnnkit classifier).",
    )
    p.add_argument("model", metavar="MODEL.keras", help="a file written by Keras' model.save()")
    p.add_argument(
        "--out",
        required=True,
        metavar="RUN",
        help="the run folder to write, or a .safetensors file (a checkpoint every command reads as a run)",
    )
    p.add_argument(
        "--classes",
        help="class names in the outputs' order, comma-separated, or a UTF-8 text file with one per line "
        "(default: class_0, class_1, ...)",
    )
    p.add_argument(
        "--raw-pixels",
        action="store_true",
        help="the Keras model was fed raw 0-255 pixels (cnnkit feeds [0, 1]: they are scaled by 255)",
    )
    p.add_argument("--mean", help="per-channel mean subtracted from [0, 1] pixels before the network, comma-separated")
    p.add_argument("--std", help="per-channel std the pixels are divided by, comma-separated")
    p.set_defaults(func=run_convert)


def _floats(text: str | None, name: str) -> list[float] | None:
    from cnnkit.errors import CnnkitError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise CnnkitError(f"--{name} takes numbers separated by commas. Received: --{name} {text}") from None


def run_convert(args) -> int:
    path, info = convert_keras(
        args.model, args.out, args.classes, _floats(args.mean, "mean"), _floats(args.std, "std"), args.raw_pixels
    )
    print(
        f"wrote {path}: {info['model']} -> {info['num_classes']} classes, input "
        f"{'x'.join(map(str, info['input_size']))}; mean {json.dumps(info['mean'])}, std {json.dumps(info['std'])}"
    )
    return 0
