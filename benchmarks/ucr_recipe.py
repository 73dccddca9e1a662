"""Choose the UCR recipe's model on validation splits of TRAIN only (TEST is never read here).

The candidates are the closed-form models of ``cnnkit sequence train``: ``multirocket`` and
``multirocket_hydra`` (the same features with Hydra's competing-kernel counts beside them). Each
is fitted on 80 % of a set's TRAIN (stratified, seed 0) and scored on the other 20 %. The rule,
fixed before any result: the challenger replaces the first when its mean validation error over the
sets is lower by more than 0.002 and it wins at least as many sets as it loses (errors compared at
4 decimals). Over the 59 installed sets with a validation split it did (0.1279 against 0.1308; 12
wins, 41 ties, 6 losses), and it is :mod:`benchmarks.ucr`'s recipe. Writes one TSV row per (set,
model), smallest sets first (series x length), so that a run cut short has covered the most sets;
an interrupted run resumes. Prints the means and the win / tie / loss count over the sets that
both models have finished.

    CNNKIT_DATA=../shared/data python benchmarks/ucr_recipe.py [--sets GunPoint ECG200 ...] [--hours 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from ucr import benchmark_sets, reference_table, train_splits  # benchmarks/ucr.py: the benchmark's sets

from cnnkit.data.series import val_split
from cnnkit.engine.precision import cpu_name
from cnnkit.models import create_model
from cnnkit.tasks.sequence import rocket

CANDIDATES = ("multirocket", "multirocket_hydra")  # the recipe, then the challenger
MARGIN = 0.002  # mean validation error the challenger must gain
COLUMNS = ["dataset", "train", "val", "length", "model", "features", "val_error", "loo_error", "alpha", "seconds"]


def summary(rows: list[list[str]]) -> str:
    """Mean validation error per model over the sets every model finished, and the challenger's
    wins / ties / losses against the recipe."""
    err = {(r[0], r[4]): float(r[6]) for r in rows if int(r[2]) > 0}  # Fungi: 1 series a class, no val
    both = sorted({s for s, _ in err if all((s, c) in err for c in CANDIDATES)})
    if not both:
        return "no set finished by every model yet"
    lines = []
    for model in CANDIDATES:
        secs = sum(float(r[9]) for r in rows if r[4] == model and r[0] in both)
        mean = sum(err[s, model] for s in both) / len(both)
        lines.append(f"{model:<18} mean validation error {mean:.4f} over {len(both)} sets, {secs:.0f} s")
    base, new = CANDIDATES
    diff = [round(err[s, new], 4) - round(err[s, base], 4) for s in both]
    wins, losses = sum(d < 0 for d in diff), sum(d > 0 for d in diff)
    gain = -sum(diff) / len(diff)
    lines.append(f"{new} against {base}: {wins} wins, {len(diff) - wins - losses} ties, {losses} losses")
    adopt = gain > MARGIN and wins >= losses
    lines.append(
        f"rule (gain > {MARGIN}, wins >= losses): gain {gain:.4f} -> {'adopt' if adopt else 'keep'} {new if adopt else base}"
    )
    return "\n".join(lines)


def compare(name: str, full, train, val) -> list[list]:
    """Both candidates fitted on ``train`` and scored on ``val``: one TSV row each.

    ``multirocket_hydra``'s features begin with ``multirocket``'s own (the same seed builds the same
    kernels and biases), so the series are transformed once and each model's linear layer is solved
    on its columns; ``seconds`` is that shared transform plus the model's own solve and validation.
    """
    nets = [
        create_model(m, num_classes=len(full.classes), in_channels=full.channels, length=full.length)
        for m in CANDIDATES
    ]
    tick = time.perf_counter()
    for net in nets:
        net.fit_biases(train.values)
    x = rocket.transform(nets[-1], train).double()  # mean 0, scale 1 as built: the raw features
    shared = time.perf_counter() - tick
    rows = []
    for model, net in zip(CANDIDATES, nets):
        tick = time.perf_counter()
        fitted = rocket.fit_head(net, x[:, : net.num_features].clone(), train.labels)
        wrong = (net.fc(rocket.transform(net, val)).argmax(1) != val.labels).double()
        error = float(wrong.mean()) if len(val) else float("nan")  # no series left for validation
        row = [name, len(train), len(val), full.length, model, net.num_features, f"{error:.4f}"]
        row += [f"{fitted['loo_error']:.4f}", f"{fitted['alpha']:.3g}", f"{shared + time.perf_counter() - tick:.1f}"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", help="these sets only (default: the UCR benchmark's installed sets)")
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--results", default="benchmarks/results/ucr_recipe_models.tsv", help="TSV appended per row")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--hours", type=float, default=0.0, help="start no new set after this long (0: no limit)")
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
    print(summary(rows))


if __name__ == "__main__":
    main()
