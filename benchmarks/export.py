"""PyTorch eager (cnnkit's default inference) vs ONNX Runtime on the same CPU, in the same run (issue 36).

Each model is exported with :func:`cnnkit.export.export_onnx` (checked: ONNX Runtime's outputs within
1e-4 of PyTorch's scale), then both run the same input with the same number of threads; the table
gives the median ms per image. Models: efficientnet_lite0 at 224 (batch 1 and 32), the notes' MNIST
convnet (``keras_mnist_convnet``), and the Penn-Fudan detector and segmenter with random weights
(the architectures ``cnnkit detect/segment train --data pennfudan`` trains: FCOS-style detector on
efficientnet_lite0 at 320x320, U-Net on efficientnet_lite0 on a 288x384 photo).

Run: ``nice python benchmarks/export.py [--threads 2]`` (a few minutes, most of it batch 32).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.export import OnnxModel, export_onnx
from cnnkit.models import create_model
from cnnkit.models.detection import create_detector
from cnnkit.models.segmentation import create_segmenter


def median_ms(fn, x: torch.Tensor, budget_s: float = 4.0, min_runs: int = 3, max_runs: int = 50) -> float:
    """Median wall time of ``fn(x)`` in ms, after one warm-up call; runs until ``budget_s`` is spent."""
    fn(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


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
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"{cpu_name()}, {args.threads} threads each; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; median ms per image\n"
    )
    print("| model | PyTorch eager | ONNX Runtime | ORT / eager | exporter | max diff |")
    print("|---|---:|---:|---:|---|---:|")
    exported: dict[int, tuple] = {}  # one export per model, whatever the batch
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model, shape) in enumerate(rows()):
            model.eval()
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
            if id(model) not in exported:
                path = Path(tmp) / f"model{i}.onnx"
                exported[id(model)] = (export_onnx(model, x[:2], path), path)
            report, path = exported[id(model)]
            # PyTorch first, before any ONNX Runtime session exists: ORT's idle threads spin for a while
            # after each run and would take the cores PyTorch is timed on
            with torch.inference_mode():
                eager = median_ms(model, x) / shape[0]
            onnx_model = OnnxModel(path, threads=args.threads)
            ort = median_ms(onnx_model, x) / shape[0]
            del onnx_model
            print(
                f"| {label} | {eager:.2f} | {ort:.2f} | {ort / eager:.2f} | {report.exporter} | "
                f"{report.max_diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
