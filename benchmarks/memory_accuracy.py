"""Predicted vs measured peak memory, with the textbook's and torchinfo's estimates side by side.

For each case: cnnkit's prediction (``cnnkit.summary``), the real peak of the same step on this machine
(the CPU allocator's running total from the profiler's memory events, parameters, input and optimizer
state included: ``cnnkit.analysis.measure.measure_peak``), the error, the notes' textbook figure and
torchinfo's "Estimated Total Size" (input + "forward/backward pass size" + parameters).

    python benchmarks/memory_accuracy.py            # all cases (a few minutes on 2 cores)
    python benchmarks/memory_accuracy.py --quick    # the small ones
    python benchmarks/memory_accuracy.py --large    # 512-2048 px: the backend extrapolated from small copies
    python benchmarks/memory_accuracy.py --video    # 3-D convolutions and the frame predictor (seconds)

Each prediction starts from an empty backend cache (a temporary $CNNKIT_HOME), so t(pred) includes
the backend's calibration runs.

torchinfo is optional (``pip install torchinfo``); without it its column reads n/a.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import cnnkit
from cnnkit.analysis.measure import measure_peak
from cnnkit.engine.precision import cpu_name
from cnnkit.models.network import resolve_target
from cnnkit.tasks.video.config import VideoConfig
from cnnkit.tasks.video.load import build_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def conv3d_stack() -> nn.Module:
    """A plain Conv3d network: two 3x3x3 conv-BN-ReLU-pool stages, a 3x1x1 temporal conv, a classifier."""
    return nn.Sequential(
        nn.Conv3d(1, 16, 3, padding=1),
        nn.BatchNorm3d(16),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),  # (B, 16, T, H, W) -> (B, 16, T/2, H/2, W/2)
        nn.Conv3d(16, 32, 3, padding=1),
        nn.BatchNorm3d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
        nn.Conv3d(32, 32, (3, 1, 1), padding=(1, 0, 0)),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),  # (B, 32, 1, 1, 1) -> (B, 32)
        nn.Linear(32, 10),
    )


def c3d_small_as_trained() -> nn.Module:
    """c3d_small inside the video task's VideoClassifier: the step ``cnnkit video train`` runs, on the
    (B, 20, 1, 64, 64) Moving MNIST clips (every second frame, resized to 32x32, normalised)."""
    return build_model(VideoConfig(model="c3d_small"))


# (target, input (C, ...) without the batch, batch, training?, optimizer, group): group 'quick' runs
# with --quick, 'large' (512-2048 px: the backend's convolutions extrapolated from small copies) with
# --large, 'video' with --video; a target is a zoo name, a spec file or a function returning a model
CASES = [
    (str(EXAMPLES / "exercise2.yaml"), (3, 200, 300), 1, False, "sgd", "quick"),
    (str(EXAMPLES / "exercise2.yaml"), (3, 200, 300), 50, False, "sgd", "quick"),
    (str(EXAMPLES / "exercise2.yaml"), (3, 200, 300), 50, True, "sgd", "quick"),
    (str(EXAMPLES / "keras_mnist.yaml"), (1, 28, 28), 256, True, "adam", "quick"),
    (str(EXAMPLES / "residual_block.yaml"), (64, 56, 56), 16, True, "momentum", "quick"),
    ("resnet18", (3, 224, 224), 16, False, "sgd", "full"),
    ("resnet18", (3, 224, 224), 16, True, "sgd", "full"),
    ("resnet50", (3, 224, 224), 8, True, "adam", "full"),
    ("vgg11", (3, 224, 224), 4, True, "adam", "full"),
    ("densenet121", (3, 224, 224), 4, True, "momentum", "full"),
    ("mobilenet_v2", (3, 224, 224), 16, True, "sgd", "full"),
    ("googlenet", (3, 224, 224), 8, False, "sgd", "full"),
    ("resnet18", (3, 512, 512), 2, True, "sgd", "large"),
    ("resnet18", (3, 1024, 1024), 1, True, "sgd", "large"),
    ("resnet18", (3, 2048, 2048), 1, False, "sgd", "large"),
    ("resnet18", (3, 2048, 2048), 1, True, "sgd", "large"),
    ("vgg11", (3, 512, 512), 1, True, "adam", "large"),
    ("mobilenet_v2", (3, 1024, 1024), 2, True, "sgd", "large"),
    ("densenet121", (3, 512, 512), 1, False, "sgd", "large"),
    # the video task's networks on what they see (10 frames of 32x32) and its optimizer (AdamW)
    ("c3d_small", (1, 10, 32, 32), 16, True, "adamw", "video"),
    ("c3d_small", (1, 10, 32, 32), 32, True, "adamw", "video"),
    ("r2plus1d_small", (1, 10, 32, 32), 16, True, "adamw", "video"),
    ("r2plus1d_small", (1, 10, 32, 32), 32, True, "adamw", "video"),
    (conv3d_stack, (1, 10, 32, 32), 32, True, "adamw", "video"),
    (c3d_small_as_trained, (20, 1, 64, 64), 32, True, "adamw", "video"),
    ("simvp_tiny", (10, 1, 64, 64), 8, True, "adamw", "video"),
    ("simvp_tiny", (10, 1, 64, 64), 32, True, "adamw", "video"),
]


def torchinfo_total(model, shape) -> int | None:
    try:
        import torchinfo
    except ImportError:
        return None
    stats = torchinfo.summary(model, input_size=shape, verbose=0, device="cpu")
    return int(stats.total_input + stats.total_output_bytes + stats.total_param_bytes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the small cases")
    ap.add_argument("--large", action="store_true", help="only the 512-2048 px cases (extrapolated backend)")
    ap.add_argument("--video", action="store_true", help="only the 3-D convolution and frame predictor cases")
    args = ap.parse_args(argv)
    picked = {g for g in ("quick", "large", "video") if getattr(args, g)}
    groups = picked or {"quick", "full", "large", "video"}
    torch.manual_seed(0)
    print(
        f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    header = (
        f"{'model':<20} {'input':>10} {'batch':>5} {'step':<14} {'predicted':>15} {'measured':>15} "
        f"{'error':>7} {'textbook':>15} {'torchinfo':>15} {'ti err':>7} {'t(pred)':>7}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for target, size, batch, training, opt, group in CASES:
        if group not in groups:
            continue
        try:
            model, _, name = (
                (target(), None, target.__name__) if callable(target) else resolve_target(target, meta=False)
            )
        except cnnkit.CnnkitError as exc:
            print(f"{Path(target).stem:<16} skipped: {exc}")
            continue
        os.environ["CNNKIT_HOME"] = tempfile.mkdtemp(prefix="cnnkit-bench-")  # no cached calibration
        t0 = time.perf_counter()
        s = cnnkit.summary(model, input_size=size, batch_size=batch, optimizer=opt)
        t_pred = time.perf_counter() - t0
        predicted = s.memory["training_peak_bytes" if training else "inference_peak_bytes"]
        book = s.textbook["training_bytes" if training else "inference_bytes"]
        ti = torchinfo_total(model, (batch, *size)) if training else None
        measured = measure_peak(model, (batch, *size), training=training, optimizer=opt)
        err = (predicted - measured) / measured
        worst = max(worst, abs(err))
        ti_txt = f"{ti:>15,}" if ti is not None else f"{'n/a':>15}"
        ti_err = f"{(ti - measured) / measured:>+7.0%}" if ti is not None else f"{'':>7}"
        step = f"train/{opt}" if training else "inference"
        print(
            f"{Path(name).stem:<20} {'x'.join(map(str, size)):>10} {batch:>5} {step:<14} {predicted:>15,} "
            f"{measured:>15,} {err:>+7.2%} {book:>15,} {ti_txt} {ti_err} {t_pred:>6.2f}s",
            flush=True,
        )
    print(f"worst |error|: {worst:.2%} (target: within 5%)")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
