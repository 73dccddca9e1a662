"""How long an analysis takes: cnnkit against torchinfo on the same models, in one run.

cnnkit is timed three ways: cold (an empty cache, so every distinct convolution is measured once on
the CPU to learn what oneDNN allocates inside it), warm (those measurements cached, the usual case),
and ATen-level only (``backend_model=False``: no real op runs at all). torchinfo runs a real forward
pass, so it is timed at the largest batch this 24 GB machine can take (the batch is printed).

    python benchmarks/analysis_speed.py          # pip install torchinfo for its column
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

import cnnkit
from cnnkit.engine.precision import cpu_name

# (model, batch analysed by cnnkit, batch torchinfo can run here)
CASES = [("resnet18", 32, 32), ("resnet50", 64, 16), ("resnet152", 256, 8), ("densenet121", 64, 8)]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    try:
        import torchinfo
    except ImportError:
        torchinfo = None
    home = tempfile.mkdtemp(prefix="cnnkit-speed-")
    os.environ["CNNKIT_HOME"] = home  # a fresh, empty measurement cache
    # one-time costs of the process (importing torch's dispatch machinery), paid once by either tool
    warm = cnnkit.create_model("resnet18")
    cnnkit.summary(warm, input_size=(3, 32, 32), batch_size=2)
    if torchinfo:
        torchinfo.summary(warm, input_size=(2, 3, 32, 32), verbose=0)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'model':<12} {'batch':>5} {'cold':>8} {'warm':>8} {'aten-only':>9} | {'torchinfo':>9} "
        f"{'(batch)':>7} {'torchinfo/warm':>14}"
    )
    for name, batch, ti_batch in CASES:
        model = cnnkit.create_model(name)
        size = (3, 224, 224)
        cold = timed(lambda: cnnkit.summary(model, input_size=size, batch_size=batch))
        warm_t = timed(lambda: cnnkit.summary(model, input_size=size, batch_size=batch))
        aten = timed(lambda: cnnkit.summary(model, input_size=size, batch_size=batch, backend_model=False))
        if torchinfo:
            ti = timed(lambda: torchinfo.summary(model, input_size=(ti_batch, *size), verbose=0))
            ti_txt = f"{ti:>8.2f}s {ti_batch:>7} {ti / warm_t:>13.1f}x"
        else:
            ti_txt = f"{'n/a':>9} {'':>7} {'':>14}"
        print(f"{name:<12} {batch:>5} {cold:>7.2f}s {warm_t:>7.2f}s {aten:>8.2f}s | {ti_txt}", flush=True)
    print(
        "cold = first analysis of these convolution shapes on this machine; warm = cached "
        f"(cache in {home}); torchinfo runs a real forward at its batch"
    )
    return 0


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
