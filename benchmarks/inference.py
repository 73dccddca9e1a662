"""Inference speed of efficientnet_lite0 at 224x224, batch 1: plain, channels-last, torch.compile (issue 15).

Run: ``flock /tmp/cnnkit-bench.lock python benchmarks/inference.py`` (about a minute; the compile
takes most of it). Prints the median ms/image over 50 runs after 10 warm-up runs, and the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from cnnkit import create_model
from cnnkit.engine.precision import cpu_name


def ms_per_image(fn, x, warmup: int = 10, runs: int = 50) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
    rows = {"plain (NCHW)": ms_per_image(model, x)}
    cl = create_model("efficientnet_lite0").eval().to(memory_format=torch.channels_last)
    cl.load_state_dict(model.state_dict())
    xc = x.contiguous(memory_format=torch.channels_last)
    rows["channels-last"] = ms_per_image(cl, xc)
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = compiled(x)
    compile_s = time.perf_counter() - t0
    assert torch.allclose(out, ref, atol=1e-3), "compiled output differs"
    rows["torch.compile (NCHW)"] = ms_per_image(compiled, x)
    print(
        f"efficientnet_lite0, 1x3x224x224, {torch.get_num_threads()} threads, torch {torch.__version__}, {cpu_name()}"
    )
    for name, ms in rows.items():
        print(f"  {name:<22} {ms:7.2f} ms/image")
    print(f"  (torch.compile's first call took {compile_s:.0f} s)")


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
