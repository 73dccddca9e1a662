"""Choose the UCR recipe's one setting on validation splits of TRAIN only (TEST is never read here).

MultiRocket's feature count: 10,000 (MiniRocket's) against 50,000 (MultiRocket's default). Each
candidate is fitted on 80 % of a set's TRAIN (stratified, seed 0) and scored on the other 20 %;
the count with the lower mean validation error over the sets becomes :mod:`benchmarks.ucr`'s recipe
(within 0.002 of each other: 50,000, the paper's). Writes one TSV row per (set, candidate) and
prints the means.

    CNNKIT_DATA=../shared/data python benchmarks/ucr_recipe.py [--sets GunPoint ECG200 ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from ucr import benchmark_sets, reference_table  # benchmarks/ucr.py: the benchmark's sets

from cnnkit.data.series import load_series, val_split
from cnnkit.engine.precision import cpu_name
from cnnkit.models.rocket import MultiRocket1d
from cnnkit.tasks.sequence import rocket

CANDIDATES = (10_000, 50_000)
COLUMNS = ["dataset", "train", "val", "length", "features", "val_error", "loo_error", "alpha", "seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", help="these sets only (default: the UCR benchmark's installed sets)")
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--results", default="benchmarks/results/ucr_recipe.tsv", help="TSV appended per row")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}  threads: {torch.get_num_threads()}  load average: {os.getloadavg()[0]:.1f}")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    rows = [line.split("\t") for line in results.read_text().splitlines()[1:]] if results.is_file() else []
    done = {(r[0], int(r[4])) for r in rows}
    if not results.is_file():
        results.write_text("\t".join(COLUMNS) + "\n")
    for name in args.sets or benchmark_sets(args.data_dir, reference_table(args.data_dir)):
        full = load_series(f"ucr:{name}", "train", args.data_dir)
        train, val = val_split(full, 0.2, 0)
        for features in CANDIDATES:
            if (name, features) in done:
                continue
            tick = time.perf_counter()
            net = MultiRocket1d(len(full.classes), full.channels, full.length, features)
            fitted = rocket.fit(net, train)
            wrong = (net.fc(rocket.transform(net, val)).argmax(1) != val.labels).double()
            error = float(wrong.mean()) if len(val) else float("nan")  # no series left for validation
            row = [name, len(train), len(val), full.length, features, f"{error:.4f}"]
            row += [f"{fitted['loo_error']:.4f}", f"{fitted['alpha']:.3g}", f"{time.perf_counter() - tick:.1f}"]
            with results.open("a") as f:
                f.write("\t".join(map(str, row)) + "\n")
            rows.append([str(v) for v in row])
            print("\t".join(map(str, row)), flush=True)
    for features in CANDIDATES:
        errs = [float(r[5]) for r in rows if int(r[4]) == features and int(r[2]) > 0]  # Fungi: 1 series a class
        secs = sum(float(r[8]) for r in rows if int(r[4]) == features)
        if errs:
            print(
                f"features {features:6d}: mean validation error {sum(errs) / len(errs):.4f} over {len(errs)} sets, {secs:.0f} s"
            )


if __name__ == "__main__":
    main()
