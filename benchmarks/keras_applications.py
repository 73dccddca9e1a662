"""Every model in ``keras.applications`` through ``cnnkit convert`` and ``cnnkit summary``, against Keras.

Each application is built with ``weights=None``, a few classes and a small input it accepts, its
weights random and seeded (Keras' initialisers, then BatchNormalization's statistics, gamma and beta
and every bias drawn at random, so a misplaced tensor shows), and saved as ``.keras`` and as legacy
``.h5``. For each file: does ``cnnkit convert`` read it, does the run it writes (``cnnkit.load``)
give Keras' outputs on the same images (largest absolute difference, and relative to the largest
output), and does ``cnnkit summary --format json`` count Keras' ``count_params()``. Needs Keras on
the PyTorch backend (no TensorFlow); prints one JSON line per application and file, and a Markdown
table at the end:

    KERAS_BACKEND=torch python benchmarks/keras_applications.py --work /tmp/apps > apps.jsonl
    KERAS_BACKEND=torch python benchmarks/keras_applications.py --only ResNet50 NASNetMobile
    KERAS_BACKEND=torch python benchmarks/keras_applications.py --only EfficientNetB7 --formats keras --float64
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

# the smallest inputs each family accepts (odd sides, so "same" pads TensorFlow's odd pixel at the end)
SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
DEFAULT_SIZE = 67
# the largest (from 60 to 350 million parameters) last
LAST = (
    "ResNet152V2",
    "ResNet152",
    "EfficientNetB6",
    "EfficientNetB7",
    "NASNetLarge",
    "EfficientNetV2M",
    "EfficientNetV2L",
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "ConvNeXtXLarge",
)


def build(name: str, size: int, classes: int, seed: int):
    """``keras.applications.<name>`` with random seeded weights (BatchNorm statistics included)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation="softmax"
    )
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        v = keras.ops.convert_to_numpy(w.value)
        path = w.path
        if "moving_variance" in path:
            v = rng.uniform(0.5, 1.5, v.shape)
        elif "moving_mean" in path or "beta" in path or path.endswith("bias"):
            v = rng.normal(0, 0.1, v.shape)
        elif "gamma" in path:
            v = rng.uniform(0.5, 1.5, v.shape)
        values.append(np.asarray(v, dtype=v.dtype if v.dtype.kind != "f" else np.float32))
    model.set_weights(values)
    return model


def preprocessing_inside(model) -> bool:
    """Does the model scale 0-255 pixels itself (a Rescaling or Normalization layer)?"""
    return any(type(layer).__name__ in ("Rescaling", "Normalization") for layer in model.layers)


@contextlib.contextmanager
def keras_computes_float64():
    """Keras' type promotion as TensorFlow's: float64 stays float64.

    On every backend but TensorFlow's, ``keras.backend.result_type`` turns float64 into float32 (as
    JAX without x64), so a float64 model still computes BatchNormalization, GroupNormalization, the
    mean and variance (global average pooling, LayerNormalization) and ``maximum`` (Normalization) in
    float32, and its output lies ~1e-7 from float64. Keras has no public switch for it: this
    changes its table (``keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE``) for the block."""
    from keras.src.backend.common import dtypes

    table = dtypes.BIT64_TO_BIT32_DTYPE
    before = table.get("float64")
    table["float64"] = "float64"
    try:
        yield
    finally:
        table["float64"] = before


def keras_float64(model, path: Path, xk):
    """Keras' logits of the saved model run in float64 (its config's float32 rewritten, and
    :func:`keras_computes_float64`), on ``xk``.

    A network with random weights can amplify rounding: how far Keras' float32 output lies from its
    own float64 one is the scale against which cnnkit's difference from Keras is judged."""
    import zipfile

    import keras
    import numpy as np

    f64 = path.with_name(path.stem + "_f64.keras")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(f64, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data.replace(b'"float32"', b'"float64"') if item.filename == "config.json" else data)
    with keras_computes_float64():
        wide = keras.saving.load_model(f64, compile=False)
        wide.layers[-1].activation = keras.activations.linear
        out = keras.ops.convert_to_numpy(wide(xk.astype(np.float64), training=False))
    f64.unlink()
    return out


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``cnnkit ARGV`` in this process: (exit code, stdout, the last line of stderr)."""
    from cnnkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 -- a traceback is a finding: record it
            code, err = 99, io.StringIO(f"TRACEBACK {type(exc).__name__}: {exc}")
    lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
    return code, out.getvalue(), (lines[-1] if lines else "")


def check(name: str, model, path: Path, work: Path, raw: bool, f64: bool = False) -> dict:
    """``cnnkit convert`` and ``cnnkit summary`` on one saved file, compared with Keras."""
    import keras
    import numpy as np
    import torch

    import cnnkit

    row: dict = {"model": name, "format": path.suffix[1:], "keras_params": int(model.count_params())}
    out = work / f"{name}_{path.suffix[1:]}_run"
    shutil.rmtree(out, ignore_errors=True)  # a run of an earlier sweep: convert never replaces one
    argv = ["convert", str(path), "--out", str(out)] + (["--raw-pixels"] if raw else [])
    t0 = time.perf_counter()
    code, _, last = run_cli(argv)
    row["convert_s"] = round(time.perf_counter() - t0, 1)
    row["convert"] = "ok" if code == 0 else f"exit {code}: {last}"
    if code == 0:
        clf = cnnkit.load(out)
        size = model.input_shape[1]
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = clf(x).numpy()
        xk = (x * (255 if raw else 1)).movedim(1, -1).numpy()
        # the run returns logits (the final softmax dropped): Keras' logits are its output with the
        # classifier's softmax switched off (after saving)
        head = model.layers[-1]
        softmax, head.activation = head.activation, keras.activations.linear
        try:
            ref = keras.ops.convert_to_numpy(model(xk, training=False))
        finally:
            head.activation = softmax
        row["max_abs_diff"] = float(np.abs(ours - ref).max())
        row["max_abs_logit"] = float(np.abs(ref).max())
        if path.suffix == ".keras":  # the yardstick: Keras' own float32 output against its float64 one
            wide = keras_float64(model, path, xk)
            row["keras_f32_vs_f64"] = float(np.abs(wide - ref).max())
            if f64:  # both in float64: what is left is the conversion's own difference, not rounding
                with torch.no_grad():
                    ours64 = clf.double()(x.double()).numpy()
                    # the bare network on Keras' own input: the conversion alone, without the run's
                    # input normalisation (it divides the float64 images by 1/255, where Keras is given
                    # the images times 255 rounded to float32)
                    net64 = clf.net(torch.from_numpy(xk).double().movedim(-1, 1)).numpy()
                row["f64_max_abs_diff"] = float(np.abs(ours64 - wide).max())
                row["f64_net_max_abs_diff"] = float(np.abs(net64 - wide).max())
                row["f64_max_abs_logit"] = float(np.abs(wide).max())
        row["argmax_equal"] = bool((ours.argmax(1) == ref.argmax(1)).all())
        # PyTorch keeps BatchNormalization's moving mean and variance (and Normalization's statistics)
        # as buffers, which Keras counts as non-trainable parameters
        params = {id(v) for v in clf.net.parameters()}
        state = clf.net.state_dict(keep_vars=True).items()
        row["buffers"] = sum(v.numel() for k, v in state if id(v) not in params and "num_batches" not in k)
        del clf
    code, stdout, last = run_cli(["summary", str(path), "--format", "json"])
    if code == 0:
        totals = json.loads(stdout)["totals"]
        row["summary_params"] = totals["params"]
        row["summary_trainable"] = totals["trainable_params"]
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        row["keras_trainable"] = trainable
        row["params_equal"] = totals["params"] == trainable  # PyTorch's parameters: Keras' trainable ones
        row["with_buffers_equal"] = totals["params"] + row.get("buffers", 0) == row["keras_params"]
    else:
        row["summary"] = f"exit {code}: {last}"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="application names (default: every one)")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--work", default=None, help="folder for the saved files and runs (default: a temporary one)")
    p.add_argument("--formats", nargs="*", default=["keras", "h5"])
    p.add_argument("--size", type=int, default=None, help="the input side for every application (default: its own)")
    p.add_argument("--float64", action="store_true", help="also run the converted .keras run in float64 against Keras'")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import keras

    from cnnkit.engine.precision import cpu_name

    print(f"# cpu: {cpu_name()}, keras {keras.__version__} on {keras.backend.backend()}", file=sys.stderr, flush=True)
    names = args.only or [n for n in dir(keras.applications) if n[0].isupper()]
    names = sorted(names, key=lambda n: LAST.index(n) if n in LAST else -1)
    work = Path(args.work or tempfile.mkdtemp(prefix="keras_apps_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, name in enumerate(names):
        size = args.size or SIZES.get(name, DEFAULT_SIZE)
        try:
            model = build(name, size, args.classes, seed)
        except Exception as exc:  # noqa: BLE001
            rows.append({"model": name, "build": f"{type(exc).__name__}: {str(exc)[:160]}"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        raw = preprocessing_inside(model)
        for fmt in args.formats:
            path = work / f"{name}.{fmt}"
            model.save(path)
            row = {"size": size, "raw_pixels": raw, **check(name, model, path, work, raw, args.float64)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.unlink()
        del model
        gc.collect()
    print(table(rows), file=sys.stderr)
    return 0


def table(rows: list[dict]) -> str:
    head = (
        "| model | file | input | Keras params (trainable) | convert | max abs diff (logits) | max abs logit "
        "| summary params (+ buffers) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "build" in r:
            lines.append(f"| {r['model']} | | | | Keras build failed: {r['build']} | | | |")
            continue
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        if "keras_f32_vs_f64" in r:
            diff += f" (Keras f32 vs f64: {r['keras_f32_vs_f64']:.1e})"
        top = f"{r['max_abs_logit']:.2f}" if "max_abs_logit" in r else ""
        if "summary_params" in r:
            ok = r["params_equal"] and r.get("with_buffers_equal")
            summary = f"{r['summary_params']:,} (+ {r.get('buffers', 0):,}){'' if ok else ' DIFFERS'}"
        else:
            summary = r.get("summary", "")
        keras_params = f"{r['keras_params']:,} ({r.get('keras_trainable', 0):,})"
        lines.append(
            f"| {r['model']} | .{r['format']} | {r['size']} | {keras_params} | {r['convert']} | {diff} | "
            f"{top} | {summary} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
