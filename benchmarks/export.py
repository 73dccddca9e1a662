"""PyTorch eager (cnnkit's default inference) vs ONNX Runtime on the same CPU, in the same run (issue 36).

Each model is exported with :func:`cnnkit.export.export_onnx` (checked: ONNX Runtime's outputs within
1e-4 of PyTorch's scale), then both run the same input with the same number of threads; the table
gives the median ms per image. Models: efficientnet_lite0 at 224 (batch 1 and 32), the notes' MNIST
convnet (``keras_mnist_convnet``), and the Penn-Fudan detector and segmenter with random weights
(the architectures ``cnnkit detect/segment train --data pennfudan`` trains: FCOS-style detector on
efficientnet_lite0 at 320x320, U-Net on efficientnet_lite0 on a 288x384 photo).

The two sides are timed in alternating blocks (eager, ORT, eager, ORT, ...) and each gets the
median: on a shared machine a change of load falls on both alike. ``--profile`` adds ONNX Runtime's
own profile (the op types that take the most time) per model.

Run: ``nice python benchmarks/export.py [--threads 2] [--profile]`` (a few minutes, most of it batch 32).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.export import OnnxModel, export_onnx
from cnnkit.models import create_model
from cnnkit.models.detection import create_detector
from cnnkit.models.segmentation import create_segmenter


def block_ms(fn, x: torch.Tensor, runs: int) -> list[float]:
    """Wall times of ``runs`` calls of ``fn(x)`` in ms."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(1000 * (time.perf_counter() - t0))
    return times


def interleaved_ms(fns: dict, x: torch.Tensor, rounds: int, budget_s: float) -> dict[str, float]:
    """Median ms of each ``fns[name](x)``, timed in alternating blocks (A B A B ...).

    Each function is called once to warm up and once to size its blocks (about ``budget_s / rounds``
    seconds each); then ``rounds`` blocks of each alternate, so that a change of load on a shared
    machine falls on both sides alike.
    """
    runs = {}
    for name, fn in fns.items():
        fn(x)
        t0 = time.perf_counter()
        fn(x)
        runs[name] = max(1, min(20, int(budget_s / rounds / max(time.perf_counter() - t0, 1e-4))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += block_ms(fn, x, runs[name])
    return {name: statistics.median(t) for name, t in times.items()}


def top_ops(path: Path, x: torch.Tensor, threads: int, n: int = 4) -> str:
    """ONNX Runtime's own profile of a few runs: the op types that take the most time, with shares."""
    import json

    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.enable_profiling = True
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(3):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e.get("dur", 0)
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{op} {100 * d / total:.0f}%" for op, d in ranked)


def rows() -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    """(label, model, input shape with batch)."""
    effnet, mnist = create_model("efficientnet_lite0"), create_model("keras_mnist_convnet")
    return [
        ("efficientnet_lite0 224, batch 1", effnet, (1, 3, 224, 224)),
        ("efficientnet_lite0 224, batch 32", effnet, (32, 3, 224, 224)),
        ("keras_mnist_convnet 28, batch 1", mnist, (1, 1, 28, 28)),
        ("keras_mnist_convnet 28, batch 256", mnist, (256, 1, 28, 28)),
        ("Penn-Fudan detector 320, batch 1", create_detector("efficientnet_lite0", 1, weights=None), (1, 3, 320, 320)),
        (
            "Penn-Fudan U-Net 288x384, batch 1",
            create_segmenter("unet", backbone="efficientnet_lite0", num_classes=2, finest=4),
            (1, 3, 288, 384),
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="threads for PyTorch and for ONNX Runtime (default: 2)")
    p.add_argument("--rounds", type=int, default=6, help="alternating timing blocks per side (default: 6)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timing per side and model (default: 6)")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    p.add_argument("--profile", action="store_true", help="also print ONNX Runtime's slowest op types per model")
    p.add_argument("--only", help="run the rows whose label contains this text")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"{cpu_name()}, {args.threads} threads each; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; median ms per image over {args.rounds} alternating blocks per side; "
        f"load average before: {os.getloadavg()[0]:.1f}\n"
    )
    print("| model | PyTorch eager | ONNX Runtime | ORT / eager | exporter | max diff |")
    print("|---|---:|---:|---:|---|---:|")
    exported: dict[int, tuple] = {}  # one export per model, whatever the batch
    profiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model, shape) in enumerate(rows()):
            if args.only and args.only not in label:
                continue
            model.eval()
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
            if id(model) not in exported:
                path = Path(tmp) / f"model{i}.onnx"
                exported[id(model)] = (export_onnx(model, x[:2], path, exporter=args.exporter), path)
            report, path = exported[id(model)]
            # no spinning: ORT's idle threads would otherwise busy-wait and take the cores the
            # PyTorch blocks in between are timed on
            onnx_model = OnnxModel(path, threads=args.threads, spin=False)

            def eager(v, model=model):
                with torch.inference_mode():
                    return model(v)

            ms = interleaved_ms({"eager": eager, "ort": onnx_model}, x, args.rounds, args.budget)
            e, o = ms["eager"] / shape[0], ms["ort"] / shape[0]
            del onnx_model
            print(
                f"| {label} | {e:.2f} | {o:.2f} | {o / e:.2f} | {report.exporter} | {report.max_diff:.1e} |",
                flush=True,
            )
            if args.profile:
                profiles.append(f"{label}: {top_ops(path, x, args.threads)}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    for line in profiles:
        print(line)


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
