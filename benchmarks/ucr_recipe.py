"""Choose the UCR recipe on validation splits of TRAIN only (TEST is never read here).

The candidates are closed-form models of ``cnnkit sequence train``, each a model and the feature
sets its ridge classifier chooses between by leave-one-out error (``rocket.fit_head``'s
``columns``): ``CANDIDATES``, the recipe first, then the challengers. Each is fitted on 80 % of a
set's TRAIN (stratified, seed 0) and scored on the other 20 %. A challenger qualifies when its mean
validation error over the sets is lower than the recipe's by more than ``--margin`` and it wins at
least as many sets as it loses (errors compared at 4 decimals); the qualifying challenger with the
largest gain replaces the recipe. The rule and the margin are fixed
before a run (the records under ``docs/experiments/`` say which). Writes one TSV row per (set,
candidate), smallest sets first (series x length), so that a run cut short has covered the most
sets; an interrupted run resumes. Prints the means and each challenger's win / tie / loss count over
the sets that every candidate has finished.

    CNNKIT_DATA=../shared/data python benchmarks/ucr_recipe.py [--sets GunPoint ECG200 ...] [--hours 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from ucr import benchmark_sets, reference_table, train_splits  # benchmarks/ucr.py: the benchmark's sets

from cnnkit.data.series import val_split
from cnnkit.engine.precision import cpu_name
from cnnkit.models import create_model
from cnnkit.tasks.sequence import rocket

CANDIDATES = {  # label: (model, the feature sets its ridge chooses between); the recipe, then the challengers
    "multirocket_hydra|ppv,minirocket,hydra": ("multirocket_hydra", rocket.COLUMNS),  # the recipe
    "multirocket_hydra|ppv": ("multirocket_hydra", ("all", "ppv")),
    "multirocket_hydra|ppv,minirocket": ("multirocket_hydra", ("all", "ppv", "minirocket")),
}
COLUMNS = [
    "dataset",
    "train",
    "val",
    "length",
    "model",
    "features",
    "val_error",
    "loo_error",
    "alpha",
    "kept",
    "seconds",
]


def summary(rows: list[list[str]], margin: float = 0.0) -> str:
    """Mean validation error per model over the sets every model finished, each challenger's wins /
    ties / losses against the recipe, and which one the rule keeps."""
    err = {(r[0], r[4]): float(r[6]) for r in rows if int(r[2]) > 0}  # Fungi: 1 series a class, no val
    both = sorted({s for s, _ in err if all((s, c) in err for c in CANDIDATES)})
    if not both:
        return "no set finished by every model yet"
    lines = []
    for model in CANDIDATES:
        secs = sum(float(r[-1]) for r in rows if r[4] == model and r[0] in both)
        mean = sum(err[s, model] for s in both) / len(both)
        lines.append(f"{model:<18} mean validation error {mean:.4f} over {len(both)} sets, {secs:.0f} s")
    base, *challengers = CANDIDATES
    best, best_gain = base, margin
    for new in challengers:
        diff = [round(err[s, new], 4) - round(err[s, base], 4) for s in both]
        wins, losses = sum(d < 0 for d in diff), sum(d > 0 for d in diff)
        gain = -sum(diff) / len(diff)
        lines.append(
            f"{new} against {base}: {wins} wins, {len(diff) - wins - losses} ties, {losses} losses, gain {gain:.4f}"
        )
        if gain > best_gain and wins >= losses:
            best, best_gain = new, gain
    lines.append(
        f"rule (gain > {margin} and wins >= losses; of those the largest gain): {'adopt' if best != base else 'keep'} {best}"
    )
    return "\n".join(lines)


def compare(name: str, full, train, val) -> list[list]:
    """Every candidate fitted on ``train`` and scored on ``val``: one TSV row each.

    The models' features begin with the same columns (the same seed builds the same kernels and
    biases: ``multirocket_hydra``'s start with ``multirocket``'s own), so the series are transformed
    once, by the candidate with the most features, and each candidate's linear layer is solved on
    its columns; ``seconds`` is that shared transform plus the candidate's own solve and validation.
    """
    models = {  # one network per model; candidates of the same model solve its head in turn
        m: create_model(m, num_classes=len(full.classes), in_channels=full.channels, length=full.length)
        for m, _ in CANDIDATES.values()
    }
    tick = time.perf_counter()
    for net in models.values():
        net.fit_biases(train.values)
    widest = max(models.values(), key=lambda net: net.num_features)
    x = rocket.transform(widest, train).double()  # mean 0, scale 1 as built: the raw features
    shared = time.perf_counter() - tick
    rows = []
    for label, (m, _) in CANDIDATES.items():
        net = models[m]
        tick = time.perf_counter()
        fitted = rocket.fit_head(net, x[:, : net.num_features].clone(), train.labels, columns=CANDIDATES[label][1])
        wrong = (net.fc(rocket.transform(net, val)).argmax(1) != val.labels).double()
        error = float(wrong.mean()) if len(val) else float("nan")  # no series left for validation
        row = [name, len(train), len(val), full.length, label, net.num_features, f"{error:.4f}"]
        row += [f"{fitted['loo_error']:.4f}", f"{fitted['alpha']:.3g}", fitted["columns"]]
        row += [f"{shared + time.perf_counter() - tick:.1f}"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", help="these sets only (default: the UCR benchmark's installed sets)")
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--results", default="benchmarks/results/ucr_recipe_models.tsv", help="TSV appended per row")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--hours", type=float, default=0.0, help="start no new set after this long (0: no limit)")
    p.add_argument("--margin", type=float, default=0.0, help="mean validation error the challenger must gain")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}  threads: {torch.get_num_threads()}  load average: {os.getloadavg()[0]:.1f}")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    rows = [line.split("\t") for line in results.read_text().splitlines()[1:]] if results.is_file() else []
    done = {(r[0], r[4]) for r in rows}
    if not results.is_file():
        results.write_text("\t".join(COLUMNS) + "\n")
    names = args.sets or benchmark_sets(args.data_dir, reference_table(args.data_dir))
    series = train_splits(names, args.data_dir, smallest_first=not args.sets)
    start = time.perf_counter()
    for name in series:
        if args.hours and time.perf_counter() - start > args.hours * 3600:
            print(f"--hours {args.hours}: stopping before {name}; run the same command again to go on")
            break
        if all((name, model) in done for model in CANDIDATES):
            continue
        full = series[name]
        train, val = val_split(full, 0.2, 0)
        for row in compare(name, full, train, val):
            with results.open("a") as f:
                f.write("\t".join(map(str, row)) + "\n")
            rows.append([str(v) for v in row])
            print("\t".join(map(str, row)), flush=True)
    print(summary(rows, args.margin))


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
