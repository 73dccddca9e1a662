"""MultiRocket beside the InceptionTime ensemble and their average, on validation splits of TRAIN
(TEST is never read).

Each set's TRAIN is split 80 / 20 (stratified, seed 0, as ``benchmarks/ucr_recipe.py``). On the 80 %
part MultiRocket is fitted (:mod:`cnnkit.tasks.sequence.rocket`) and five InceptionTime networks are
trained with seeds 0-4 (the ``cnnkit sequence train --model inception_time --ensemble 5`` recipe,
without its own validation); on the 20 % part each scores its class probabilities, MultiRocket's as
the softmax of its ridge scores divided by a temperature T. The hybrid averages the two. Writes a TSV
row per set (validation errors of MultiRocket, the ensemble and the hybrid at each T, and the
seconds) and saves the validation outputs beside it, so that other ways of combining them can be
scored without training again. Resumable: sets already in the TSV are skipped.

The rule, fixed before the first run: the hybrid (at one T for every set, the T with the lowest
mean validation error) becomes the UCR recipe only if, over every set with a validation split, its
mean validation error is lower than MultiRocket's by more than 0.002 (the rule ucr_hydra.py applies)
and it wins on more sets than it loses. T is chosen on the same validation errors it is judged on,
one number for all sets; the margin is the guard.

    CNNKIT_DATA=../shared/data python benchmarks/ucr_hybrid.py [--sets CBF GunPoint ...] [--hours H]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from ucr import benchmark_sets, reference_table, train_splits  # benchmarks/ucr.py: the benchmark's sets

from cnnkit.data.series import SeriesSet, val_split
from cnnkit.engine.precision import cpu_name
from cnnkit.models.rocket import MultiRocket1d
from cnnkit.tasks.sequence import SequenceConfig, rocket
from cnnkit.tasks.sequence.evaluate import predict_proba
from cnnkit.tasks.sequence.train import _train_one

TEMPERATURES = (0.1, 0.25, 0.5, 1.0)
MEMBERS = 5
COLUMNS = ["dataset", "train", "val", "length", "classes", "multirocket", "inception_time"]
COLUMNS += [f"hybrid_t{t:g}" for t in TEMPERATURES] + ["seconds_multirocket", "seconds_inception_time"]


def compare(name: str, full: SeriesSet, data_dir, threads: int) -> tuple[list, dict] | None:
    """One set's validation errors and outputs from its TRAIN series ``full``; None when no series
    is left for validation."""
    train, val = val_split(full, 0.2, 0)
    if not len(val):
        return None
    k = len(full.classes)
    tick = time.perf_counter()
    torch.set_num_threads(threads)
    net = MultiRocket1d(k, full.channels, full.length, seed=0)
    rocket.fit(net, train)
    with torch.no_grad():
        scores = net.fc(rocket.transform(net, val)).double()  # (N, K) ridge scores
    t_rocket = time.perf_counter() - tick

    tick = time.perf_counter()
    torch.set_num_threads(1)  # the trained networks' default: they are small
    cfg = SequenceConfig(data=f"ucr:{name}", model="inception_time", data_dir=data_dir).resolved_for(len(train))
    probs = torch.stack(
        [
            predict_proba(_train_one(replace(cfg, seed=s), train, None, None, False, True).model, val.values).double()
            for s in range(MEMBERS)
        ]
    ).mean(0)
    t_it = time.perf_counter() - tick

    def error(p: torch.Tensor) -> float:
        return float((p.argmax(1) != val.labels).double().mean())

    row = [name, len(train), len(val), full.length, k, error(scores), error(probs)]
    row += [error((scores / t).softmax(1) + probs) for t in TEMPERATURES]
    row += [round(t_rocket, 1), round(t_it, 1)]
    return row, {"scores": scores, "probs": probs, "labels": val.labels}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sets", nargs="+", help="these sets only (default: the UCR benchmark's installed sets, smallest first)"
    )
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--results", default="benchmarks/results/ucr_hybrid.tsv", help="TSV appended per set")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="MultiRocket's torch threads")
    p.add_argument("--hours", type=float, default=0.0, help="stop starting new sets after this long (0: no limit)")
    args = p.parse_args()
    print(f"cpu: {cpu_name()}  load average: {os.getloadavg()[0]:.1f}")
    results = Path(args.results)
    outputs = results.with_suffix("")
    outputs.mkdir(parents=True, exist_ok=True)
    if not results.is_file():
        results.write_text("\t".join(COLUMNS) + "\n")
    done = {line.split("\t")[0] for line in results.read_text().splitlines()[1:]}
    names = [n for n in args.sets or benchmark_sets(args.data_dir, reference_table(args.data_dir)) if n not in done]
    series = train_splits(names, args.data_dir, smallest_first=not args.sets)
    start = time.perf_counter()
    for name in list(series):
        if args.hours and time.perf_counter() - start > args.hours * 3600:
            print(f"stopped after {args.hours:g} h; run again to continue")
            break
        r = compare(name, series.pop(name), args.data_dir, args.threads)
        if r is None:
            continue
        row, out = r
        torch.save(out, outputs / f"{name}.pt")
        with results.open("a") as f:
            f.write("\t".join(str(round(v, 4) if isinstance(v, float) else v) for v in row) + "\n")
        print("\t".join(map(str, row)), flush=True)
    rows = [line.split("\t") for line in results.read_text().splitlines()[1:]]
    if rows:
        means = {
            c: sum(float(r[i]) for r in rows) / len(rows)
            for i, c in enumerate(COLUMNS)
            if 5 <= i < 7 + len(TEMPERATURES)
        }
        print(f"{len(rows)} sets, mean validation error: " + ", ".join(f"{c} {v:.4f}" for c, v in means.items()))


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
