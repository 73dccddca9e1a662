"""DCGAN on MNIST within a time budget: the MNIST score and Frechet distance of its digits, beside real ones.

Trains an unconditional and a class-conditional DCGAN (``cnnkit generate train``) for ``--minutes``
of training each, then scores ``--count`` digits of each with a cnnkit-trained MNIST classifier
(``--classifier``, e.g. made by ``cnnkit train --data mnist --label-smoothing 0 --out runs/mnist``) and prints the same
figures for real held-out test digits, measured in the same run. Also prints the CPU, the load
average and the training samples each run processed (timings on a shared machine mean little alone).

    python benchmarks/gan.py --classifier runs/mnist --minutes 20 --out runs/bench-gan
    python benchmarks/gan.py --classifier runs/mnist --out runs/bench-gan --eval-only   # score saved runs
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.generate import GenerateConfig, evaluate_run, train


def samples_done(run: Path) -> tuple[int, float]:
    """(training samples, training seconds) of a saved run, from its metrics.csv and settings."""
    from cnnkit.engine.runfolder import read_info

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    cfg = read_info(run)["config"]
    digits = cfg["subset"] or 60000
    steps = digits // cfg["batch_size"]
    seconds = sum(float(r["seconds"]) for r in rows)
    return len(rows) * steps * cfg["batch_size"], seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True, help="a `cnnkit train --data mnist` run")
    p.add_argument("--out", default="runs/bench-gan", help="folder of the two runs")
    p.add_argument("--minutes", type=float, default=20.0, help="training time of each run")
    p.add_argument("--epochs", type=int, default=50, help="at most this many epochs")
    p.add_argument("--threads", type=int, default=1, help="torch threads of training")
    p.add_argument("--count", type=int, default=10000, help="digits scored per set")
    p.add_argument("--subset", type=int, default=0, help="train on the first N digits (0: all 60,000)")
    p.add_argument("--only", choices=["uncond", "cond"], help="one of the two runs")
    p.add_argument("--codes", type=int, default=0, help="the unconditional run's InfoGAN code (0: none)")
    p.add_argument("--clusters", type=int, default=0, help="the unconditional run's k-means clusters (0: none)")
    p.add_argument("--eval-only", action="store_true", help="score the runs already in --out")
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    args = p.parse_args(argv)
    from cnnkit.engine.runfolder import resolve

    resolve(Path(args.classifier))  # a wrong path fails now, not after the training
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}")
    for kind in [args.only] if args.only else ["uncond", "cond"]:
        run = Path(args.out) / kind
        if not args.eval_only:
            cfg = GenerateConfig(
                conditional=kind == "cond",
                codes=args.codes if kind == "uncond" else 0,
                clusters=args.clusters if kind == "uncond" else 0,
                epochs=args.epochs,
                minutes=args.minutes,
                threads=args.threads,
                subset=args.subset,
                data_dir=args.data_dir,
            )
            load = os.getloadavg()
            train(cfg, run, quiet=True)
            print(f"{kind}: load average during training {load[0]:.1f} (start) {os.getloadavg()[0]:.1f} (end)")
        samples, seconds = samples_done(run)
        tick = time.perf_counter()
        out = evaluate_run(run, args.classifier, count=args.count, data_dir=args.data_dir)
        g, r = out["generated"], out["real"]
        print(
            f"{kind}: {samples:,} training samples in {seconds / 60:.1f} min of training "
            f"(load average now {os.getloadavg()[0]:.1f}); scored {args.count} digits per set in "
            f"{time.perf_counter() - tick:.0f} s"
        )
        print(f"  MNIST score     generated {g['score']:.3f}   real test digits {r['score']:.3f}")
        print(f"  Frechet dist.   generated {g['fd']:.3f}   real test digits {r['fd']:.3f}")
        if "note" in out:
            print(f"  note: {out['note']}")
        if "accuracy" in g:
            worst = min(g["accuracy_by_class"].items(), key=lambda kv: kv[1])
            print(
                f"  classified as asked  generated {g['accuracy']:.2%} (worst class {worst[0]}: "
                f"{worst[1]:.2%})   real test digits {r['accuracy']:.2%}"
            )
    return 0


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
